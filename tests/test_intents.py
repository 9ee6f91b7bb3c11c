"""Which answer a question gets: the real all-MiniLM-L6-v2 encoder against prompts/intents.json."""
from __future__ import annotations

import pytest

from assistant.intents import IntentClassifier

# Questions as users type them, most of them not among the examples. Some guard routings that need
# particular examples in prompts/intents.json: without enough judgement examples "Is there any
# anomaly?" goes to "where" (nearest: "Where is the anomaly?"), without the off-topic examples
# "Where is Paris?" gets an inspection answer, and without the judgement examples that name a kind
# of defect "Is there a blowhole?" falls below min_similarity and is answered as off-topic.
QUESTIONS = {
    "judgement": ["Is there any anomaly?", "is there any anomaly", "Is this tile OK?", "Is it defective?",
                  "Is this image anomalous?", "Do you see any defect?", "Is the part good?", "Any anomalies?",
                  "Is there a blowhole?", "Can you find a crack?", "Are there any knots?", "Does it have a hole?"],
    "where": ["Where is the defect?", "Which area?", "Where is the damage located?", "In which corner is it?",
              "Where exactly is the anomaly?"],
    "describe": ["What kind of anomaly is it?", "Describe it.", "What type of defect?"],
    "confidence": ["How certain are you?", "What's the score?", "Are you sure?"],
    "count": ["How many anomalies are there?", "How many defects?"],
    "advice": ["Should I scrap this part?", "Can I ship it?"],
    "greeting": ["Hello there"],
    "thanks": ["Thank you very much"],
    "help": ["How does this work?"],
    "off_topic": ["What is the capital of France?", "Write me a poem about the sea.", "Where is Paris?",
                  "What time is it now?", "Which city is the capital of Italy?"],
}


@pytest.fixture(scope="module")
def classifier() -> IntentClassifier:
    return IntentClassifier()


@pytest.mark.parametrize("intent,question", [(i, q) for i, qs in QUESTIONS.items() for q in qs])
def test_questions_reach_the_right_answer(classifier, intent, question):
    assert classifier.classify(question)[0] == intent


def test_the_intent_regression_fits_what_scikit_learn_fits(classifier):
    """`LinearIntents` is scikit-learn's L2 multinomial logistic regression written on torch; on the
    examples it must give the same intents, and nearly the same probabilities, on questions it was
    not fitted on."""
    import json
    from pathlib import Path

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from assistant.prompts import load

    labels, embeddings = classifier._examples
    strength = float(load("intents")["linear_c"])
    reference = LogisticRegression(C=strength, max_iter=5000).fit(embeddings.numpy(), labels)
    bank = json.loads((Path(__file__).parent / "data" / "inspector_questions.json").read_text(encoding="utf-8"))
    questions = classifier._embed([entry["question"] for entry in bank["questions"]])
    ours = np.stack([classifier._linear.probabilities(q) for q in questions])
    theirs = reference.predict_proba(questions.numpy())
    assert list(reference.classes_) == classifier._linear.classes
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).mean() >= 0.99
    assert np.abs(ours - theirs).max() < 0.03
