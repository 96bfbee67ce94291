"""A small QA file as users have them (question, knowledge, right and hallucinated answer
columns; the wrong answer longer and fluent) and task YAML files over it, for the tests of
YAML-only tasks and of the damage guard."""

from __future__ import annotations

import json
from pathlib import Path

# (question, knowledge, right answer, hallucinated answer): the wrong one is long and fluent, so
# a per-token mean log-likelihood prefers it (a format bias that puts the baseline below chance).
ITEMS = [
    (
        "What is the capital of France?",
        "France is a country in Europe.",
        "Paris",
        "The capital of France is London, the largest city in the United Kingdom",
    ),
    (
        "How many legs does a spider have?",
        "Spiders are arachnids.",
        "Eight",
        "Six legs, just like all of the other insects that live in the garden",
    ),
    (
        "What colour is the sky on a clear day?",
        "Sunlight scatters in the air.",
        "Blue",
        "The colour of the sky on a clear day is green, and it turns purple at night",
    ),
    (
        "Which planet do we live on?",
        "The solar system has eight planets.",
        "Earth",
        "The planet we live on is Mars, which is the fourth planet from the Sun",
    ),
    (
        "What do bees make?",
        "Bees collect nectar from flowers.",
        "Honey",
        "What bees make is milk, just like the cows that live on the farm",
    ),
    (
        "What is frozen water called?",
        "Water freezes at zero degrees.",
        "Ice",
        "Frozen water is called steam, and it rises up into the sky as clouds",
    ),
    (
        "How many days are in a week?",
        "Weeks start on Monday or Sunday.",
        "Seven",
        "There are ten days in a week, and the weekend is three days long",
    ),
    (
        "Which animal barks?",
        "Many people keep pets at home.",
        "A dog",
        "The animal that barks is the cat, which barks at the postman every morning",
    ),
    (
        "What is the opposite of hot?",
        "Temperatures vary by season.",
        "Cold",
        "The opposite of hot is warm, which is what you feel in the summer sun",
    ),
    (
        "What do you use to write on paper?",
        "Schools supply stationery.",
        "A pen",
        "To write on paper you use a spoon, which is found in every kitchen drawer",
    ),
    (
        "Which season comes after winter?",
        "There are four seasons.",
        "Spring",
        "Autumn comes right after winter, when the leaves begin to fall again",
    ),
    (
        "What is two plus two?",
        "Addition combines numbers.",
        "Four",
        "Two plus two is equal to five, as every student learns in school",
    ),
    (
        "What gas do people breathe in to live?",
        "Air is a mix of gases.",
        "Oxygen",
        "The gas that people breathe in to live is helium, which fills party balloons",
    ),
    (
        "Where do fish live?",
        "Fish have gills.",
        "In water",
        "Fish live in the trees of the forest, where they build their nests",
    ),
    (
        "What is the largest ocean on Earth?",
        "Oceans cover most of Earth.",
        "The Pacific",
        "The largest ocean on Earth is the Baltic Sea, in the north of Europe",
    ),
    (
        "How many hours are in a day?",
        "A day is one turn of the Earth.",
        "Twenty-four",
        "There are twelve hours in a day, from the morning until the evening",
    ),
]

ROWS = [
    {"question": q, "knowledge": k, "right_answer": r, "hallucinated_answer": h}
    for q, k, r, h in ITEMS
]

# Multiple choice over two answer columns, the first always right: no reshaping of the file.
MC_TASK = """
name: qa_mc
source: {source}
columns:
  prompt: question
  choices: [right_answer, hallucinated_answer]
  answer: 0
prompt_template: "{{knowledge}}\\nQuestion: {{prompt}}\\nAnswer:"
chat_template: false
answer_prefix: ""
splits: {{train: 4, validation: 8, test: 4, seed: 0}}
objective:
  kind: multiple_choice
  direction: maximize
  balance: swap
  loglik: mean
  batch_size: 8
  kl: {{n_prompts: 2, max_new_tokens: 4}}
"""

# The same file as A/B items with a letter answer: option lines in the template.
AB_TASK = """
name: qa_ab
source: {source}
columns:
  prompt: question
  positive: right_letter
  negative: wrong_letter
prompt_template: {ab_template}
chat_template: false
answer_prefix: " ("
splits: {{train: 4, validation: 8, test: 4, seed: 0}}
objective:
  kind: choice_probability
  direction: maximize
  balance: none
  batch_size: 8
  kl: {{n_prompts: 2, max_new_tokens: 4}}
"""

# Generation scored against the right answer; train pairs from the same file (disjoint rows),
# rendered with the validation prompts' template ({knowledge} included) and chat template.
GEN_TASK = """
name: qa_gen
source: {source}
columns: {{prompt: question, answer: right_answer}}
train_source: {source}
train_columns: {{prompt: question, positive: right_answer, negative: hallucinated_answer}}
prompt_template: "{{knowledge}}\\nQuestion: {{prompt}}"
chat_template: true
answer_prefix: ""
splits: {{train: 4, validation: 6, test: 4, seed: 0}}
objective:
  kind: generation
  scorer: exact
  direction: maximize
  balance: none
  batch_size: 8
  max_new_tokens: 4
  kl: {{n_prompts: 2, max_new_tokens: 4}}
"""

AB_TEMPLATE = (
    "{knowledge}\nQuestion: {prompt}\n(A) {right_answer}\n(B) {hallucinated_answer}\nAnswer:"
)

TASKS = {"qa_mc": MC_TASK, "qa_ab": AB_TASK, "qa_gen": GEN_TASK}


def write_qa(tmp_path: Path) -> Path:
    """The QA file (jsonl, with letter columns for the A/B task) and a config dir holding every
    task above; returns the config dir (`--config-dir` / `hydra.searchpath`)."""
    source = tmp_path / "qa.jsonl"
    rows = [{**r, "right_letter": "A", "wrong_letter": "B"} for r in ROWS]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    conf = tmp_path / "qa_conf"
    (conf / "task").mkdir(parents=True)
    for name, text in TASKS.items():
        task = text.format(source=source, ab_template=json.dumps(AB_TEMPLATE))
        (conf / "task" / f"{name}.yaml").write_text(task)
    return conf
