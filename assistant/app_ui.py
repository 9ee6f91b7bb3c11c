"""The web app: a Gradio Blocks UI around one shared, loaded-once Assistant.

Per-session state (the conversation) lives in gr.State, so nothing crosses between browser tabs
or API clients. Every problem reaches the user as one gr.Error line; the server keeps serving.

Endpoints (gradio_client):
  /ask   stateless: (image, message, references, history, class_name, threshold, max_new_tokens,
         mm_per_pixel=0, profile="") -> (answer, result JSON, new history, overlay PNG path or None);
         mm_per_pixel (0 = unknown) gives region sizes in millimetres; profile (a saved profile's
         name) replaces the references
  /save_profile  (name, references, class_name, preset) -> (status, profile choices): the uploaded
         good images saved as a profile (assistant/profiles.py)
  /chat  what the page itself calls; the conversation is kept in the session's state
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import functools  # noqa: E402
import hashlib  # noqa: E402
import html  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from .cli_support import check_threshold, load_assistant, load_references, one_line, png_bytes  # noqa: E402
from .config import available_presets, load_preset  # noqa: E402

log = logging.getLogger("assistant.app")

MAX_FILE_SIZE = "20mb"
MAX_SHOTS = 8
DEFAULT_TOKENS = 60
EXAMPLE_QUESTION = "Is there any anomaly in the image?"
OVERLAY_TMP = Path(tempfile.gettempdir()) / "anomaly-assistant-app"
OVERLAY_MAX_AGE_S = 3600
SHOWN_SIDE = 2048

CSS = """
#title h1 { margin-bottom: 0; }
#title p { margin-top: 4px; }
.cpu-note { font-size: 0.9em; color: var(--body-text-color-subdued); }
.verdict { border-radius: 10px; padding: 12px 14px; border: 1px solid var(--border-color-primary); }
.verdict .badge { display: inline-block; font-weight: 700; letter-spacing: .04em; padding: 3px 12px;
                  border-radius: 999px; font-size: 0.95em; }
.verdict.bad .badge { background: #fdecea; color: #b71c1c; }
.verdict.ok .badge { background: #e8f5e9; color: #1b5e20; }
.verdict.none { color: var(--body-text-color-subdued); }
.verdict .nums { margin-top: 8px; font-variant-numeric: tabular-nums; }
.verdict .bar { position: relative; height: 8px; background: #e9ecef; border-radius: 4px; margin: 6px 0 4px; }
.verdict .bar span { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 4px; }
.verdict .bar i { position: absolute; left: 50%; top: -3px; bottom: -3px; width: 2px; background: #333; }
.verdict .small { font-size: 0.85em; color: var(--body-text-color-subdued); }
"""

INTRO = """# Anomaly Assistant
Visual inspection with a conversation. **1.** Upload a photo of the part (or use the webcam / paste).
**2.** Add one or more photos of *known-good* parts of the same kind as references (recommended: the decision
threshold is calibrated on them). **3.** Ask a question, e.g. *"Is there any anomaly?"*, *"Where is it?"*,
*"How sure are you?"*. The heatmap shows where the image differs from normal; boxes mark the anomalous regions."""

EMPTY_VERDICT = "<div class='verdict none'>No result yet: upload an image and ask a question.</div>"
NO_PROFILE = "(none: the references above)"


# -- models ---------------------------------------------------------------------------------------------
class Models:
    """The start-up preset's Assistant (loaded once) plus at most one other preset, loaded on demand."""

    def __init__(self, preset: str = "embedded", checkpoint: str | None = None, use_llm: bool = True):
        self.use_llm = use_llm
        self.default = load_assistant(preset, checkpoint, use_llm=use_llm)
        self.default_name = self.default.preset.get("name", preset)
        self.default.intents.classify("hello")  # embeds the example questions now, not on the first request
        self._other: tuple[str, object] | None = None
        self._lock = threading.Lock()

    def get(self, name: str | None):
        if not name or name == self.default_name:
            return self.default
        with self._lock:
            if self._other is None or self._other[0] != name:
                self._other = None  # free the previous one before loading the next
                started = time.time()
                self._other = (name, load_assistant(name, None, use_llm=self.use_llm))
                log.info("preset %s loaded in %.1f s", name, time.time() - started)
            return self._other[1]

    @property
    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


# -- examples -------------------------------------------------------------------------------------------
def examples_dir() -> Path:
    root = os.environ.get("ANOMALY_ASSISTANT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "anomaly-assistant") / "examples"


def ensure_examples() -> list[list]:
    """A few example rows from the MIT simulated textile set (conformal-clip-data), copied to the cache
    once. Returns [] when the package is missing (the app works without examples)."""
    try:
        import conformal_clip_data as ccd
    except ImportError:
        return []
    from .checkpoint import atomic_write_bytes

    try:
        nominal = sorted(Path(ccd.nominal_dir()).glob("*.jpg"))
        local = sorted(Path(ccd.local_dir()).glob("*.jpg"))
        picks = {"textile_defect_a.jpg": local[1], "textile_defect_b.jpg": local[5], "textile_good.jpg": nominal[5],
                 "textile_reference_1.jpg": nominal[-1], "textile_reference_2.jpg": nominal[-2]}
        folder = examples_dir()
        for name, source in picks.items():
            if not (folder / name).is_file():
                atomic_write_bytes(folder / name, source.read_bytes())
    except (OSError, IndexError) as exc:
        log.warning("examples unavailable: %s", one_line(exc))
        return []
    refs = [str(folder / "textile_reference_1.jpg"), str(folder / "textile_reference_2.jpg")]
    return [
        [str(folder / "textile_defect_a.jpg"), refs, EXAMPLE_QUESTION, "textile"],
        [str(folder / "textile_good.jpg"), refs, "Does this fabric look normal?", "textile"],
        [str(folder / "textile_defect_b.jpg"), refs, "Where is the defect?", "textile"],
    ]


# -- helpers --------------------------------------------------------------------------------------------
def lenient_preprocess(component: gr.Image) -> gr.Image:
    """Make a gr.Image hand undecodable uploads on as a path instead of failing inside Gradio with a bare
    'Error': `load_image` then says in one line what is wrong. (Patched on the instance: a gr.Image
    subclass would make Gradio write a .pyi stub next to this module.)"""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Exception:  # noqa: BLE001 - load_image will say what is wrong with it
            return None if payload is None else payload.path

    component.preprocess = preprocess
    return component


def _check_history(history) -> list[dict]:
    if history in (None, "", []):
        return []
    if not isinstance(history, list) or not all(
            isinstance(t, dict) and t.get("role") in ("user", "assistant", "system") and isinstance(t.get("content"), str)
            for t in history):
        raise ValueError("history must be a list of {\"role\": \"user\"|\"assistant\", \"content\": text} messages")
    return [{"role": t["role"], "content": t["content"]} for t in history]


class DefectUploads:
    """Defect examples uploaded as a .zip, unpacked once per archive content: the kind matcher fitted
    on them is cached with the examples, so a follow-up question does not describe them again."""

    def __init__(self, size: int = 4):
        self._loaded: dict[str, object] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, upload):
        """The DefectExamples of an uploaded archive, or None without one."""
        from .defect_kinds import examples_from_archive

        paths = _paths(upload)
        if not paths:
            return None
        path = Path(paths[0])
        if path.suffix.lower() != ".zip":
            raise ValueError(f"{path.name}: defect examples are uploaded as a .zip of <kind>/ folders")
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        with self._lock:
            if digest not in self._loaded:
                if len(self._loaded) >= self._size:
                    self._loaded.pop(next(iter(self._loaded)))
                self._loaded[digest] = examples_from_archive(path)
            return self._loaded[digest]


def _paths(files) -> list[str]:
    if not files:
        return []
    if isinstance(files, (str, Path)):
        return [str(files)]
    out = []
    for item in files:
        path = getattr(item, "path", None) or getattr(item, "name", None) or (item.get("path") if isinstance(item, dict) else item)
        out.append(str(path))
    return out


def _save_overlay(image, query) -> str:
    """The overlay as a PNG in a fresh temp folder (Gradio serves it from there); old ones are pruned."""
    OVERLAY_TMP.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in OVERLAY_TMP.iterdir():
        try:
            if now - old.stat().st_mtime > OVERLAY_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    stem = Path(str(query)).stem if isinstance(query, (str, Path)) else "image"
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60] or "image"
    folder = OVERLAY_TMP / uuid.uuid4().hex[:12]
    folder.mkdir()
    path = folder / f"{stem}_overlay.png"
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(image))
    return str(path)


def _problem(exc: Exception) -> str:
    """One line for the user; the server log gets the traceback only for unexpected errors."""
    if isinstance(exc, (ValueError, OSError)):  # ImageError, EngineError, ModelLoadError, bad values
        log.warning("request refused: %s", one_line(exc))
        return one_line(exc)
    log.error("internal error while answering", exc_info=exc)
    return f"internal error: {one_line(exc)}"


def shown_size(image):
    """The overlay as the page shows it: at most SHOWN_SIDE pixels a side (a 12-megapixel PNG would
    take seconds to send and is shrunk by the browser anyway); the download keeps every pixel."""
    if image is None or max(image.size) <= SHOWN_SIDE:
        return image
    shown = image.copy()
    shown.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    return shown


def zoom_crops(result) -> list:
    """The regions of an anomalous answer cut from the image at its own resolution (the gallery beside
    the overlay, which a large image only shows shrunk), each followed by the same place on a
    reference photo where one was found (visual evidence, outlined in green)."""
    if result.detection is None or result.image is None or not result.detection.regions:
        return []
    from .visualize import outlined_crop, region_crops

    shown = []
    for index, crop in enumerate(region_crops(result.image, result.detection)):
        shown.append(crop)
        area = result.areas[index] if index < len(result.areas) else None
        if area is not None:
            shown.append((outlined_crop(result.references[area.reference], area.box, colour=(40, 200, 80)),
                          f"reference {area.reference + 1}, same place ({area.position}; similarity {area.similarity:.2f})"))
    return shown


def profile_choices() -> list[str]:
    from .profiles import names

    return [NO_PROFILE, *names()]


def chosen_profile(value) -> str | None:
    return None if value in (None, "", NO_PROFILE) else str(value)


def verdict_html(detection, seconds: float | None = None, profile: str | None = None) -> str:
    if detection is None:
        return EMPTY_VERDICT
    bad = detection.anomalous
    fraction = max(0.0, min(1.0, detection.score / max(2.0 * detection.threshold, 1e-9)))
    colour = "#c62828" if bad else "#2e7d32"
    mode = (f"few-shot, {detection.n_references} reference{'s' if detection.n_references != 1 else ''}"
            if detection.mode == "few-shot" else
            "zero-shot: the threshold is not calibrated on your parts; add a known-good reference for that")
    if detection.mode == "few-shot" and detection.threshold_estimated:
        mode += ": the threshold is estimated from one surface reference; add a second to measure it"
    if profile:
        mode = f"profile '{html.escape(profile)}': {mode}"
    where = ", ".join(html.escape(r.position) for r in detection.regions)
    lines = [
        f"<div class='verdict {'bad' if bad else 'ok'}' id='verdict'>",
        f"<span class='badge'>{'ANOMALY DETECTED' if bad else 'NORMAL'}</span>",
        f"<div class='nums'>score <b>{detection.score:.4f}</b> {'&gt;' if bad else '&le;'} threshold <b>{detection.threshold:.4f}</b>"
        f" &middot; confidence {detection.confidence:.0%}</div>",
        f"<div class='bar' title='the mark is the threshold'><span style='width:{fraction * 100:.1f}%;background:{colour}'></span><i></i></div>",
    ]
    if where:
        lines.append(f"<div>Regions: {where}</div>")
    took = f" &middot; answered in {seconds:.1f} s" if seconds is not None else ""
    lines.append(f"<div class='small'>{mode} &middot; class '{html.escape(detection.class_name)}'{took}</div></div>")
    return "".join(lines)


# -- the app --------------------------------------------------------------------------------------------
def build_app(models: Models, examples: list[list] | None = None, profile: str | None = None) -> gr.Blocks:
    presets = available_presets()
    if models.default_name not in presets:
        presets = [models.default_name, *presets]

    uploads = DefectUploads()

    def run(image, message, references, history, class_name, threshold, preset, shots, max_new_tokens, mm_per_pixel=None,
            profile=None, defect_examples=None):
        """One turn; raises ValueError subclasses (ImageError, EngineError, ModelLoadError, ProfileError,
        DefectKindError) for the user. A chosen profile replaces the uploaded references, and its class
        the default one; uploaded defect examples replace a profile's."""
        history = _check_history(history)
        threshold = check_threshold(threshold)
        refs = _paths(references)
        if shots:
            refs = refs[: max(1, int(shots))]
        tokens = int(max_new_tokens or DEFAULT_TOKENS)
        if not 1 <= tokens <= 1024:
            raise ValueError(f"max new tokens must be between 1 and 1024, got {tokens}")
        if image is not None and not isinstance(image, (str, Path)):
            image = _paths([image])[0]
        assistant = models.get(preset)
        defects = uploads.get(defect_examples)
        profile = chosen_profile(profile)
        if profile:
            saved = assistant.profile(profile)
            class_name = saved.class_name if (class_name or "object").strip() in ("", "object") else class_name
            return assistant.chat(image, message, saved.references, history, class_name, threshold, tokens,
                                  mm_per_pixel, defects=defects if defects is not None else saved.defects)
        refs = load_references(refs)  # decoded here so a broken one is named by its file name
        return assistant.chat(image, message, refs, history, class_name, threshold, tokens, mm_per_pixel,
                              defects=defects)

    def guarded(fn):
        @functools.wraps(fn)  # keeps the parameter names the API shows
        def wrapper(*args):
            try:
                return fn(*args)
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - one line for the user, the server keeps serving
                raise gr.Error(_problem(exc), print_exception=False) from None
        return wrapper

    def chat(image, message, references, history, class_name, threshold, preset, shots, max_new_tokens, mm_per_pixel=None,
             profile=None, defect_examples=None):
        """What the page calls. A problem is answered in the chat (and left out of the session's history,
        so the language model never sees it) instead of as an error overlay on every output."""
        started = time.time()
        try:
            result = run(image, message, references, history, class_name, threshold, preset, shots, max_new_tokens,
                         mm_per_pixel, profile, defect_examples)
            heatmap = result.heatmap
            overlay = _save_overlay(heatmap, image) if heatmap is not None else None
            heatmap = shown_size(heatmap)
        except Exception as exc:  # noqa: BLE001 - one line for the user, the server keeps serving
            problem = _problem(exc)
            try:
                shown = _check_history(history)
            except ValueError:
                shown = []
            asked = " ".join(str(message or "").split())[:300] or "(no question)"
            shown = shown + [{"role": "user", "content": asked},
                             {"role": "assistant", "content": f"⚠ Could not answer: {problem}"}]
            box = f"<div class='verdict none' id='verdict-problem'>Could not answer: {html.escape(problem)}</div>"
            return (shown, gr.skip(), None, box, gr.DownloadButton(value=None, interactive=False), gr.skip(), [])
        download = (gr.DownloadButton("⬇ Download overlay PNG", value=overlay, interactive=True)
                    if overlay is not None else gr.DownloadButton(value=None, interactive=False))
        log.info("answered in %.1f s (%s)", time.time() - started,
                 "no image" if result.detection is None else f"score {result.detection.score:.4f}")
        return (result.history, result.history, heatmap,
                verdict_html(result.detection, time.time() - started, chosen_profile(profile)),
                download, "", zoom_crops(result))

    @guarded
    def ask(image, message, references, history, class_name, threshold, max_new_tokens, mm_per_pixel=0, profile="",
            defect_examples=None):
        """Stateless question: pass the history returned by the previous call to continue a conversation."""
        result = run(image, message, references, history, class_name, threshold, None, None, max_new_tokens,
                     mm_per_pixel, profile, defect_examples)
        overlay = _save_overlay(result.heatmap, image) if result.heatmap is not None else None
        return result.answer, result.to_json(), result.history, overlay

    @guarded
    def save_profile(name, references, class_name, preset):
        """The uploaded good images saved as a profile; the dropdown then offers (and selects) it."""
        from .profiles import check_name, profile_dir

        name = check_name(" ".join(str(name or "").split()))
        good = [Path(path) for path in _paths(references)]
        if not good:
            raise ValueError("upload the known-good images to save as a profile first")
        if profile_dir(name).exists():
            raise ValueError(f"a profile named {name!r} exists; choose another name")
        load_references([str(path) for path in good])  # a broken upload is named before anything is built
        started = time.time()
        info = models.get(preset).create_profile(name, good, (class_name or "object").strip() or "object")
        status = (f"Saved profile **{html.escape(name)}** from {info['n_good_images']} good images "
                  f"(class '{html.escape(info['class_name'])}') in {time.time() - started:.0f} s.")
        return status, gr.Dropdown(choices=profile_choices(), value=name)

    def select_profile(name):
        """Choosing a profile shows its class; its references replace the uploaded ones."""
        chosen = chosen_profile(name)
        if not chosen:
            return gr.skip(), "Using the uploaded references."
        from .profiles import ProfileError, read_info

        try:
            info = read_info(chosen)
        except ProfileError as exc:
            gr.Warning(one_line(exc))
            return gr.skip(), one_line(exc)
        return info["class_name"], (f"Using profile **{html.escape(chosen)}**: {info['n_good_images']} good images; "
                                    "the uploaded references are not used.")

    def select_preset(name):
        try:
            models.get(name)
        except (ValueError, OSError) as exc:
            gr.Warning(one_line(exc))
            return gr.Dropdown(value=models.default_name), f"Using preset **{models.default_name}**."
        return gr.Dropdown(value=name), f"Using preset **{name}**."

    def clear():
        return (None, None, [], [], None, EMPTY_VERDICT,
                gr.DownloadButton("⬇ Download overlay PNG", value=None, interactive=False), "", [], None)

    with gr.Blocks(title="Anomaly Assistant", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO, elem_id="title")
        if models.device == "cpu":
            gr.Markdown("Running on **CPU**: the first question about a new image or a new set of references "
                        "takes roughly 10-60 s (reference features and threshold are computed, then the language "
                        "model writes); follow-up questions about the same image take a few seconds.",
                        elem_classes=["cpu-note"], elem_id="cpu-note")
        history = gr.State([])
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                image = lenient_preprocess(gr.Image(label="Query image", type="filepath", image_mode=None,
                                                    sources=["upload", "webcam", "clipboard"], height=300,
                                                    elem_id="query-image"))
                references = gr.File(label="Known-good references", file_count="multiple",
                                     file_types=["image"], height=120, elem_id="references")
                class_name = gr.Textbox(value="object", label="Object class", max_lines=1,
                                        info="What the part is, e.g. tire, textile, metal plate", elem_id="class-name")
                choices = profile_choices()
                profile_pick = gr.Dropdown(choices, value=profile if profile in choices else NO_PROFILE,
                                           label="Profile", elem_id="profile",
                                           info="A saved product: its references and threshold, built once")
                profile_status = gr.Markdown("", elem_id="profile-status")
                with gr.Accordion("Save the references as a profile", open=False, elem_id="save-profile-box"):
                    profile_name = gr.Textbox(label="Profile name", max_lines=1, elem_id="profile-name",
                                              placeholder="e.g. tire-line-3")
                    save_button = gr.Button("Save profile", elem_id="save-profile")
                with gr.Accordion("Defect kinds (optional)", open=False, elem_id="defect-kinds-box"):
                    defect_examples = gr.File(label="Defect examples: a .zip of one folder per kind",
                                              file_count="single", file_types=[".zip"], height=90,
                                              elem_id="defect-examples")
                    gr.Markdown("`cut/1.png`, `cut/1_mask.png`, `hole/2.png`, ...: masks are optional. Each "
                                "region found is then named after the closest kind, or none of them.")
                with gr.Accordion("Settings", open=False):
                    preset = gr.Dropdown(presets, value=models.default_name, label="Model preset",
                                         info="Presets other than the loaded one load on demand; large ones need a GPU.")
                    preset_status = gr.Markdown(f"Using preset **{models.default_name}**"
                                                f"{'' if models.use_llm else ' (language model off: template answers)'}.")
                    shots = gr.Slider(1, MAX_SHOTS, value=MAX_SHOTS, step=1, label="Shots used",
                                      info="How many of the uploaded references to use (in upload order)")
                    threshold = gr.Number(value=0, label="Threshold override", minimum=0,
                                          info="0 = calibrated on the references")
                    max_tokens = gr.Slider(8, 200, value=DEFAULT_TOKENS, step=4, label="Max new tokens",
                                           info="Length limit of the language model's part of the answer")
                    scale = gr.Number(value=0, label="Scale (mm per pixel)", minimum=0, elem_id="scale",
                                      info="0 = unknown: sizes in pixels (or say it: 'the image is 50 mm wide')")
            with gr.Column(scale=5, min_width=360):
                chatbot = gr.Chatbot(label="Conversation", height=470, feedback_options=None, elem_id="chatbot",
                                     placeholder="Upload an image, add references, then ask a question.")
                message = gr.Textbox(label="message", show_label=False, max_lines=4, elem_id="message",
                                     placeholder="Ask about the image, e.g. 'Is there any anomaly?' (Enter to send)")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear_btn = gr.Button("Clear", variant="secondary", elem_id="clear")
            with gr.Column(scale=4, min_width=300):
                verdict = gr.HTML(EMPTY_VERDICT, label="verdict", elem_id="verdict-box")
                heatmap = gr.Image(label="Anomaly heatmap (regions boxed)", type="pil", format="png",
                                   interactive=False, height=330, elem_id="heatmap", buttons=["fullscreen"])
                download = gr.DownloadButton("⬇ Download overlay PNG", value=None, interactive=False, elem_id="download")
                zoom = gr.Gallery(label="Regions at full resolution (click one to enlarge)", columns=3, height=210,
                                  object_fit="contain", format="png", interactive=False, elem_id="region-zoom")
        crops = gr.State([])  # the gallery's images; a State keeps them out of the /chat API's outputs
        if examples:
            gr.Examples(examples, inputs=[image, references, message, class_name],
                        label="Examples (MIT simulated textile set)", example_labels=[
                            "textile with a small defect", "normal textile", "textile: where is the defect?"])

        with gr.Column(visible=False):  # inputs/outputs of the stateless /ask endpoint
            api_image = gr.File(label="image", file_count="single")
            api_message = gr.Textbox(label="message", value="")
            api_refs = gr.File(label="references", file_count="multiple", value=[])
            api_history = gr.JSON(label="history", value=[])
            api_class = gr.Textbox(label="class_name", value="object")
            api_threshold = gr.Number(label="threshold", value=0)
            api_tokens = gr.Number(label="max_new_tokens", value=DEFAULT_TOKENS, precision=0)
            api_scale = gr.Number(label="mm_per_pixel", value=0)
            api_profile = gr.Textbox(label="profile", value="")
            api_defects = gr.File(label="defect_examples", file_count="single", value=None)
            api_answer = gr.Textbox(label="answer")
            api_result = gr.JSON(label="result")
            api_new_history = gr.JSON(label="history")
            api_overlay = gr.File(label="overlay")
            api_button = gr.Button("ask")

        gr.on([send.click, message.submit], chat,
              inputs=[image, message, references, history, class_name, threshold, preset, shots, max_tokens, scale,
                      profile_pick, defect_examples],
              outputs=[chatbot, history, heatmap, verdict, download, message, crops], api_name="chat").then(
            lambda shown: shown or None, inputs=crops, outputs=zoom, api_visibility="private")
        clear_btn.click(clear, outputs=[image, references, chatbot, history, heatmap, verdict, download, message, crops,
                                        zoom], api_visibility="private")
        preset.change(select_preset, inputs=preset, outputs=[preset, preset_status], api_visibility="private")
        save_button.click(save_profile, inputs=[profile_name, references, class_name, preset],
                          outputs=[profile_status, profile_pick], api_name="save_profile")
        profile_pick.change(select_profile, inputs=profile_pick, outputs=[class_name, profile_status],
                            api_visibility="private")
        # profiles made elsewhere (the command line, another tab) since the app started
        demo.load(lambda: gr.Dropdown(choices=profile_choices()), outputs=profile_pick, api_visibility="private")
        api_button.click(ask, inputs=[api_image, api_message, api_refs, api_history, api_class, api_threshold, api_tokens,
                                      api_scale, api_profile, api_defects],
                         outputs=[api_answer, api_result, api_new_history, api_overlay], api_name="ask")
    return demo


THEME_KW = {"primary_hue": "blue", "neutral_hue": "slate",
            "font": ["ui-sans-serif", "system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}


def serve(args) -> int:
    """Load models once, build the app, serve until interrupted (the `app` sub-command and app.py)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("assistant").setLevel(logging.INFO)
    load_preset(args.preset)  # unknown preset: one line before anything slow
    started = time.time()
    models = Models(args.preset, args.checkpoint, use_llm=not args.no_llm)
    log.info("models loaded in %.1f s (preset %s, language model %s, %s)", time.time() - started,
             models.default_name, "on" if models.use_llm else "off", models.device)
    if getattr(args, "profile", None):
        models.default.profile(args.profile)  # a missing, damaged or foreign profile: one line before serving
    demo = build_app(models, ensure_examples(), getattr(args, "profile", None))
    demo.queue(default_concurrency_limit=max(1, args.concurrency), max_size=64)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE_SIZE,
                    quiet=True, prevent_thread_lock=True, ssr_mode=False, show_error=False, inbrowser=False,
                    theme=gr.themes.Soft(**THEME_KW), css=CSS, footer_links=["api", "settings"])
    except OSError as exc:
        raise OSError(f"cannot start the server on {args.host}:{args.port}: {one_line(exc)}") from None
    print(f"Running on local URL:  {demo.local_url}", flush=True)
    if args.share and demo.share_url:
        print(f"Running on public URL: {demo.share_url}", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
