"""Per-word attributions of a promoted model's predictions, as JSON data and an HTML highlight.

    python -m medsweep.explain model=<promoted dir> input=<file.csv|file.jsonl> output=<file.json>
        [text_column=NAME] [text_pair_column=NAME] [id_column=NAME] [max_length=N] [steps=N] [limit=N]
        [method=occlusion|integrated_gradients]

method=occlusion (default): leave one word out; the score is how much p(predicted) drops without
the word. Model-agnostic (merged LoRA, decoders), easy to read (one forward pass per word), and it
answers the question a reviewer asks ("would the prediction change without this word?"), but it is
blind to words that matter only together.

method=integrated_gradients: integrated gradients (Sundararajan et al. 2017) with
captum's LayerIntegratedGradients on the input embeddings: for the predicted class, how much each
token moved its probability away from a baseline input in which every non-special token is replaced by the padding token. Token scores are
summed into words (the tokenizer's word boundaries), so a reader sees "hypertension", not "##tension".
Positive: the word pushed towards the predicted class; negative: away from it. The scores add up to
p(predicted | text) - p(predicted | baseline); `convergence_delta` says how far the numeric
integral (`steps` points) is from that, a check on the attribution itself. IG explains the
difference from the baseline: where the baseline itself already predicts the class
(`baseline_probabilities`), the scores say little, and on small or poorly trained networks the
per-word scores can be noisy (large opposite scores on neighbouring filler words) although they
add up correctly; it is an option, not the default, for that reason.

Output: the JSON file (one record per input: predicted label, probabilities, words with character
spans and scores) and, next to it, the same name with .html: the texts with each word shaded by
its score (green towards the prediction, red against). Both hold the input text: keep them where
the input is kept.
"""

from __future__ import annotations

import html
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch

from medsweep.config import ConfigError
from medsweep.release import layout
from medsweep.serving.args import arg, tool_main
from medsweep.serving.inference import load_promoted, predict_proba
from medsweep.serving.predict import ModelInputArgs, checked_output, input_columns, read_inputs

DEFAULT_STEPS = 64


@dataclass
class ExplainArgs(ModelInputArgs):
    output: str = arg("the attributions (JSON; the HTML highlight goes next to it)", metavar="<file.json>")
    steps: int = arg("integrated gradients: points of the path integral", DEFAULT_STEPS, "N")
    limit: Optional[int] = arg("explain only the first N inputs", None, "N")
    method: Literal["occlusion", "integrated_gradients"] = arg("how words are scored", "occlusion",
                                                                "occlusion|integrated_gradients")


@dataclass
class Encoded:
    """One input, tokenized, with the words its tokens belong to."""

    inputs: dict  # input_ids, attention_mask[, token_type_ids] on the model's device
    words: dict  # (segment, word index) -> {"segment", "start", "end", "score", "word"}
    token_word: dict  # token index -> (segment, word index)
    truncated: bool


def encode(tokenizer, text: str, pair: Optional[str], max_length: int, device) -> Encoded:
    """Words are the tokenizer's word boundaries, as character spans of the text (segment 0) or
    the pair (segment 1); special tokens belong to no word."""
    encoded = tokenizer(text, pair, truncation=True, max_length=max_length, return_tensors="pt",
                        return_offsets_mapping=True)
    offsets = encoded.pop("offset_mapping")[0].tolist()
    words: dict[tuple[int, int], dict] = {}
    token_word = {}
    for index, (word, segment) in enumerate(zip(encoded.word_ids(0), encoded.sequence_ids(0))):
        if word is None or segment is None:
            continue
        start, end = offsets[index]
        entry = words.setdefault((segment, word), {"segment": segment, "start": start, "end": end, "score": 0.0})
        entry["start"], entry["end"] = min(entry["start"], start), max(entry["end"], end)
        token_word[index] = (segment, word)
    sources = (text, pair)
    for entry in words.values():
        entry["word"] = sources[entry["segment"]][entry["start"]:entry["end"]]
    inputs = {k: v.to(device) for k, v in encoded.items()}
    return Encoded(inputs, words, token_word, truncated=len(offsets) >= max_length)


def probabilities_of(model, inputs: dict):
    """p(class | input ids, attention mask) for a batch of variants of one input: what captum differentiates."""
    # Segment ids matter for pair inputs (BERT); decoders have none.
    extra = {"token_type_ids": inputs["token_type_ids"]} if "token_type_ids" in inputs else {}

    def probabilities(ids, attention):
        expanded = {k: v.expand(ids.shape[0], -1) for k, v in extra.items()}
        return torch.softmax(model(input_ids=ids, attention_mask=attention, **expanded).logits.float(), dim=-1)

    return probabilities


def occlusion_scores(model, tokenizer, text: str, pair: Optional[str], encoded: Encoded, target: int,
                     p_target: float, max_length: int) -> str:
    """Leave one word out: its score is how much p(predicted) drops without it."""
    variants = []
    for entry in encoded.words.values():
        parts = [text, pair]
        source = parts[entry["segment"]]
        parts[entry["segment"]] = source[:entry["start"]] + source[entry["end"]:]
        variants.append(parts)
    pairs = [v[1] for v in variants] if pair is not None else None
    occluded = predict_proba(model, tokenizer, [v[0] for v in variants], pairs, max_length=max_length, batch_size=64)
    for entry, row in zip(encoded.words.values(), occluded):
        entry["score"] = float(p_target - row[target])
    return "occlusion: drop in p(predicted) when the word is removed"


def integrated_gradient_scores(model, tokenizer, encoded: Encoded, target: int, steps: int,
                               label_names: list[str]) -> dict:
    """Integrated gradients on the input embeddings from a pad-token baseline (see the module docstring)."""
    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError:
        raise ConfigError("method=integrated_gradients needs captum: pip install 'medsweep[explain]'") from None

    input_ids, mask = encoded.inputs["input_ids"], encoded.inputs["attention_mask"]
    probabilities = probabilities_of(model, encoded.inputs)
    special = torch.tensor(tokenizer.get_special_tokens_mask(input_ids[0].tolist(), already_has_special_tokens=True),
                           dtype=torch.bool, device=input_ids.device)
    fill = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
    baseline = torch.where(special, input_ids[0], torch.full_like(input_ids[0], fill)).unsqueeze(0)
    attributions, delta = LayerIntegratedGradients(probabilities, model.get_input_embeddings()).attribute(
        input_ids, baselines=baseline, target=target, additional_forward_args=(mask,), n_steps=steps,
        return_convergence_delta=True, internal_batch_size=steps)
    token_scores = attributions.sum(dim=-1)[0].detach().cpu().numpy().astype(float)
    for index, key in encoded.token_word.items():
        encoded.words[key]["score"] += float(token_scores[index])
    with torch.no_grad():
        baseline_probs = probabilities(baseline, mask)[0].cpu().numpy().astype(float)
    return {"method": f"integrated gradients on the input embeddings (captum), {steps} steps, pad-token baseline",
            "baseline_probabilities": dict(zip(label_names, baseline_probs.tolist())),
            "convergence_delta": float(delta.abs().max())}


def explain_one(model, tokenizer, text: str, pair: Optional[str], label_names: list[str], max_length: int,
                steps: int = DEFAULT_STEPS, method: str = "occlusion") -> dict:
    """Prediction and per-word attributions for one input (see the module docstring for the methods)."""
    model.eval()
    encoded = encode(tokenizer, text, pair, max_length, next(model.parameters()).device)
    with torch.no_grad():
        probs = probabilities_of(model, encoded.inputs)(encoded.inputs["input_ids"], encoded.inputs["attention_mask"])
    probs = probs[0].cpu().numpy().astype(float)
    target = int(probs.argmax())
    record = {"text": text, **({"text_pair": pair} if pair is not None else {}),
              "predicted_label": label_names[target], "probabilities": dict(zip(label_names, probs.tolist()))}
    if method == "occlusion":
        record["method"] = occlusion_scores(model, tokenizer, text, pair, encoded, target, probs[target], max_length)
    else:
        record.update(integrated_gradient_scores(model, tokenizer, encoded, target, steps, label_names))
    record["words"] = sorted(encoded.words.values(), key=lambda w: (w["segment"], w["start"]))
    record["truncated"] = encoded.truncated
    return record


def highlight(record: dict) -> str:
    """One input as HTML: each word shaded by its score, scaled to the input's largest score."""
    largest = max((abs(w["score"]) for w in record["words"]), default=0.0) or 1.0
    parts = []
    for segment, source in enumerate([record["text"], record.get("text_pair")]):
        if source is None:
            continue
        position, spans = 0, []
        for word in (w for w in record["words"] if w["segment"] == segment):
            spans.append(html.escape(source[position:word["start"]]))
            alpha = min(1.0, abs(word["score"]) / largest)
            colour = f"rgba(0,160,0,{alpha:.2f})" if word["score"] >= 0 else f"rgba(220,0,0,{alpha:.2f})"
            spans.append(f'<span style="background:{colour}" title="{word["score"]:.4f}">'
                         f'{html.escape(source[word["start"]:word["end"]])}</span>')
            position = word["end"]
        spans.append(html.escape(source[position:]))
        parts.append("<p>" + "".join(spans) + "</p>")
    probability = record["probabilities"][record["predicted_label"]]
    head = f"<h3>{html.escape(str(record.get('id', '')))} predicted: {html.escape(record['predicted_label'])} ({probability:.3f})</h3>"
    return head + "".join(parts)


def write_html(records: list[dict], path: Path) -> None:
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>medsweep explanations</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;line-height:1.6}"
            "span{border-radius:3px;padding:0 1px}</style></head><body><h1>medsweep explanations</h1>"
            "<p>Green words pushed towards the predicted label, red against (see the JSON for the method); hover for "
            "the score.</p>" + "".join(highlight(r) for r in records) + "</body></html>\n")
    path.write_text(page)


def run(args: ExplainArgs) -> Path:
    settings = layout.read_settings(args.model)
    output = checked_output(args.output, args.input)
    text_column, pair_column = input_columns(args, settings)
    texts, pairs, ids = read_inputs(args.input, text_column, pair_column, args.id_column)
    promoted = load_promoted(settings.folder, max_length=args.max_length)
    records = []
    for i in range(min(args.limit or len(texts), len(texts))):
        record = explain_one(promoted.model, promoted.tokenizer, texts[i], pairs[i] if pairs else None,
                             promoted.label_names, promoted.max_length, args.steps, args.method)
        records.append({"id": ids[i], **record} if ids is not None else record)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(json.dumps({"model": str(args.model), "version": promoted.version, "explanations": records},
                              indent=2, default=str))
    os.replace(tmp, output)
    write_html(records, output.with_suffix(".html"))
    return output


def main(argv: Optional[Sequence[str]] = None) -> int:
    return tool_main("medsweep.explain", ExplainArgs, argv,
                     lambda args: "wrote {0} and {1}".format(output := run(args), output.with_suffix(".html")))


if __name__ == "__main__":
    sys.exit(main())
