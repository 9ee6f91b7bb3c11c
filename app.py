"""Web app entry point: `python app.py [--host 127.0.0.1] [--port 7860] [--share] [--no-llm] [--preset P] [--checkpoint DIR]`.

The same as `anomaly-assistant app ...`; see assistant/app_ui.py for the UI itself.
"""
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from assistant.cli import main  # noqa: E402  (environment first, then gradio-importing modules)

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
