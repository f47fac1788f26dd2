"""lm-eval task files with local data, written for the tests (no hub): a multiple-choice and a loglikelihood task."""

from __future__ import annotations

import json
from pathlib import Path

MC_ROWS = [
    {"question": "What is 2 + 3?", "choices": ["4", "5", "6", "7"], "answer": 1},
    {"question": "What is 10 - 4?", "choices": ["6", "5", "14", "7"], "answer": 0},
    {"question": "What is 3 * 3?", "choices": ["6", "8", "9", "12"], "answer": 2},
    {"question": "Which is a colour?", "choices": ["table", "blue", "seven", "run"], "answer": 1},
    {"question": "Which animal barks?", "choices": ["cat", "fish", "dog", "bird"], "answer": 2},
]
LL_ROWS = [
    {"context": "The sun rises in the", "continuation": " east"},
    {"context": "Water freezes at zero degrees", "continuation": " Celsius"},
    {"context": "A week has seven", "continuation": " days"},
    {"context": "The opposite of hot is", "continuation": " cold"},
]


def write_tasks(folder: Path) -> Path:
    """Write `pt_arith_mc` and `pt_text_ll` (YAML + jsonl) into `folder`; returns the folder (an lm_eval.include_path)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS))
    (folder / "ll.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LL_ROWS))
    (folder / "pt_arith_mc.yaml").write_text(f"""task: pt_arith_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "mc.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (folder / "pt_text_ll.yaml").write_text(f"""task: pt_text_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "ll.jsonl"}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
""")
    return folder
