"""The web app as its users reach it: real `python app.py` server, real HTTP via gradio_client, real models.

One server (language model on) is shared by every test here and by tests/test_browser.py.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from make_bad_inputs import LONG_MESSAGE  # noqa: E402

SHORT = 8  # max new tokens where the test is about input handling, not about the language model


def client(url: str) -> Client:
    return Client(url, verbose=False)


def ask(c: Client, image, message="Is there any anomaly in the image?", references=(), history=None,
        class_name="object", threshold=0, tokens=SHORT):
    return c.predict(handle_file(str(image)) if image is not None else None, message,
                     [handle_file(str(r)) for r in references], history or [], class_name, threshold, tokens,
                     api_name="/ask")


def chat(c: Client, image, message, references, class_name="textile", tokens=24, preset="embedded"):
    return c.predict(handle_file(str(image)), message, [handle_file(str(r)) for r in references], class_name, 0,
                     preset, 8, tokens, api_name="/chat")


def text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content if isinstance(part, dict))


def assert_one_clear_line(message: str, *words: str) -> None:
    assert message and "\n" not in message.strip(), f"not one line: {message!r}"
    assert "Traceback" not in message and "File \"" not in message, message
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"


def test_startup_logs_load_time_and_url(app_server):
    if app_server.log is None:
        pytest.skip("external server (ANOMALY_APP_URL): no log to read")
    text = app_server.log_text()
    assert "models loaded in" in text and "language model on" in text
    assert f"Running on local URL:  {app_server.url}" in text


def test_ask_endpoint_answers_with_overlay_and_follow_up(app_server, textile):
    c = client(app_server.url)
    defect, reference = textile["defect"][0], textile["reference"]
    answer, result, history, overlay = ask(c, defect, references=reference, class_name="textile", tokens=40)
    assert answer.startswith("Yes") and result["answer"] == answer
    assert result["anomalous"] is True and result["score"] > result["threshold"] > 0
    width, height = Image.open(defect).size
    assert result["regions"], result
    for region in result["regions"]:
        x0, y0, x1, y1 = region["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and region["position"]
    assert [m["role"] for m in history] == ["user", "assistant"] and history[1]["content"] == answer
    assert Image.open(overlay).size == (width, height) and Image.open(overlay).format == "PNG"

    answer2, result2, history2, _ = ask(c, defect, "Where is it?", reference, history, "textile")
    assert len(history2) == 4 and history2[:2] == history
    assert result2["anomalous"] is True and "anomal" in answer2.lower()


def test_without_references_the_answer_is_zero_shot_and_says_so(app_server, textile):
    """No known-good photo: the engine compares the textile with itself, finds the painted blot, and
    the confidence answer tells the user how it judged."""
    c = client(app_server.url)
    answer, result, history, _ = ask(c, textile["defect"][0], class_name="textile")
    assert answer.startswith("Yes") and result["anomalous"] is True
    assert result["regions"][0]["position"] == "top left", result  # the blot at x 40-68, y 60-80 of 250
    answer2, _, _, _ = ask(c, textile["defect"][0], "How confident are you?", (), history, "textile")
    assert "without a reference image" in answer2
    _, heatmap, verdict, _, _ = chat(c, textile["defect"][0], "Is there any anomaly?", [])
    assert heatmap and "ANOMALY DETECTED" in verdict and "Regions: top left" in verdict
    assert "zero-shot" in verdict and "add a known-good reference" in verdict


def test_bad_inputs_through_the_api(app_server, bad_inputs):
    c = client(app_server.url)
    reference = bad_inputs["reference.png"].path
    for name, case in bad_inputs.items():
        if name.startswith("reference"):
            continue
        if case.expect == "error":
            with pytest.raises(Exception) as caught:
                ask(c, case.path, references=[reference])
            assert_one_clear_line(str(caught.value), *case.words)
        else:
            answer, result, history, overlay = ask(c, case.path, references=[reference])
            assert answer and result["anomalous"] in (True, False), name
            assert Image.open(overlay).size == case.size, name  # upright size (EXIF rotation applied)

    # a reference of another size than the query is fine; a broken reference is named as such
    answer, result, _, _ = ask(c, bad_inputs["good.png"].path, references=[bad_inputs["reference_other_size.png"].path])
    assert answer and result["threshold"] > 0
    with pytest.raises(Exception) as caught:
        ask(c, bad_inputs["good.png"].path, references=[bad_inputs["truncated.png"].path])
    assert_one_clear_line(str(caught.value), "reference truncated.png")

    # messages: empty means the default question; 10,000 characters are cut, not refused
    good = bad_inputs["good.png"].path
    answer, _, history, _ = ask(c, good, "", [reference])
    assert answer and history[0]["content"] == "Is there any anomaly in the image?"
    answer, _, history, _ = ask(c, good, LONG_MESSAGE, [reference])
    assert answer and len(history[0]["content"]) <= 2000

    # other wrong values: one line each
    for kwargs, words in (({"threshold": -1}, ["threshold"]), ({"history": [{"nope": 1}]}, ["history"]),
                          ({"history": "not a list"}, ["history"])):
        with pytest.raises(Exception) as caught:
            ask(c, good, references=[reference], **kwargs)
        assert_one_clear_line(str(caught.value), *words)

    # no image: the assistant asks for one instead of failing
    answer, result, _, overlay = ask(c, None, "Is it defective?")
    assert "upload" in answer.lower() and result["anomalous"] is None and overlay is None

    # and the server still serves a normal request
    answer, result, _, _ = ask(c, good, references=[reference])
    assert answer and result["anomalous"] is False


def test_too_large_upload_is_refused_and_server_keeps_serving(app_server, bad_inputs, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(bad_inputs["good.png"].path.read_bytes() + os.urandom(21 * 2**20))  # over the 20 MB limit
    c = client(app_server.url)
    with pytest.raises(Exception) as caught:
        ask(c, big, references=[bad_inputs["reference.png"].path])
    assert "Traceback" not in str(caught.value)
    answer, result, _, _ = ask(c, bad_inputs["good.png"].path, references=[bad_inputs["reference.png"].path])
    assert answer and result["anomalous"] is False


def test_uploaded_defect_examples_name_the_kind_and_a_bad_archive_is_one_line(app_server, tire_dir, tmp_path):
    """/ask with a .zip of labelled examples (its last input): every region gets one of the user's
    kinds or none, and "What kind of defect is it?" is answered with them."""
    from test_defect_kinds import copy_examples, masked, zip_folder

    defects = tmp_path / "defects"
    for kind in ("contamination", "cut", "hole"):
        copy_examples(defects, kind, masked(tire_dir, kind)[:3])
    archive = zip_folder(defects, tmp_path / "tire-defects.zip", "defects/")
    query = masked(tire_dir, "contamination")[6][0]
    reference = sorted((tire_dir / "train" / "good").iterdir())[0]
    c = client(app_server.url)

    def ask_kind(examples):
        return c.predict(handle_file(str(query)), "What kind of defect is it?", [handle_file(str(reference))], [],
                         "tire", 0, SHORT, 0, "", handle_file(str(examples)), api_name="/ask")

    answer, result, _, _ = ask_kind(archive)
    assert result["anomalous"] is True and result["regions"]
    assert all(region["kind"] in ("contamination", "cut", "hole", None) for region in result["regions"])
    assert "It looks most like a *" in answer or "none of the kinds you gave me" in answer, answer
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not really")
    with pytest.raises(Exception) as caught:
        ask_kind(broken)
    assert_one_clear_line(str(caught.value), "broken.zip", "not a readable .zip")
    answer, result, _, _ = ask(c, query, references=[reference], class_name="tire")
    assert answer and result["anomalous"] is True


def test_page_endpoint_answers_problems_in_the_chat_without_keeping_them(app_server, textile, bad_inputs):
    """/chat (what the page calls) shows a problem as one chat line and leaves the session's history alone."""
    c = client(app_server.url)
    shown, heatmap, verdict, _, message = chat(c, textile["normal"][0], "Is there any anomaly?", textile["reference"],
                                               preset="clip-vit-l-14-336")
    problem = text_of(shown[-1])
    assert problem.startswith("⚠ Could not answer:") and "clip-vit-l-14-336" in problem and "\n" not in problem
    assert heatmap is None and "Could not answer" in verdict
    assert message != ""  # the question is left in the box (an unchanged-value update) to fix and resend
    shown, *_ = chat(c, bad_inputs["text.png"].path, "Is it fine?", textile["reference"])
    assert "text.png: not a readable image" in text_of(shown[-1]) and len(shown) == 2
    history, heatmap, verdict, _, message = chat(c, textile["normal"][0], "Is there any anomaly?",
                                                 textile["reference"], tokens=8)
    assert len(history) == 2 and heatmap and "NORMAL" in verdict and message == ""  # the failed turns left no trace


def test_eight_concurrent_conversations_keep_their_own_history(app_server, textile):
    """8 sessions at once through the page's own stateful endpoint (language model on), two turns each."""
    images = [*textile["normal"][:4], *textile["defect"][:4]]
    start = threading.Barrier(len(images))

    def conversation(i: int):
        c = client(app_server.url)
        start.wait(timeout=60)
        first = chat(c, images[i], f"Is there any anomaly? (conversation {i})", textile["reference"])
        second = chat(c, images[i], f"Where is it? (conversation {i})", textile["reference"])
        return i, first, second

    started = time.time()
    with ThreadPoolExecutor(len(images)) as pool:
        results = list(pool.map(conversation, range(len(images))))
    print(f"8 conversations x 2 turns in {time.time() - started:.1f} s")
    for i, first, second in results:
        defect = i >= 4
        history = second[0]
        assert len(first[0]) == 2 and len(history) == 4, (i, history)
        users = [text_of(m) for m in history if m["role"] == "user"]
        assert users == [f"Is there any anomaly? (conversation {i})", f"Where is it? (conversation {i})"], (i, users)
        answers = [text_of(m) for m in history if m["role"] == "assistant"]
        assert answers[0].startswith("Yes" if defect else "No"), (i, answers)
        if defect:
            assert "anomaly is at the" in answers[1] or "anomalous areas, at" in answers[1], (i, answers)
        else:
            assert "no anomalous area" in answers[1], (i, answers)
        for verdict in (first[2], second[2]):
            assert ("ANOMALY DETECTED" in verdict) == defect, (i, verdict)
        assert second[1] and Image.open(second[1]).size == Image.open(images[i]).size
