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
from pathlib import Path
from typing import Optional, Sequence

import torch

from medsweep.config import ConfigError
from medsweep.tool_args import parse_key_values, tool_main
from medsweep.predict import load_promoted, predict_proba, read_inputs, read_model_settings

USAGE = ("usage: python -m medsweep.explain model=<promoted dir> input=<file.csv|file.jsonl> output=<file.json> "
         "[text_column=NAME] [text_pair_column=NAME] [id_column=NAME] [max_length=N] [steps=N] [limit=N] [method=occlusion|integrated_gradients]")
ARGUMENTS = ("model", "input", "output", "text_column", "text_pair_column", "id_column", "max_length", "steps", "limit", "method")
DEFAULT_STEPS = 64


METHODS = ("occlusion", "integrated_gradients")


def explain_one(model, tokenizer, text: str, pair: Optional[str], label_names: list[str], max_length: int,
                steps: int = DEFAULT_STEPS, method: str = "occlusion") -> dict:
    """Prediction and per-word attributions for one input (see the module docstring for the methods)."""
    encoded = tokenizer(text, pair, truncation=True, max_length=max_length, return_tensors="pt",
                        return_offsets_mapping=True)
    offsets = encoded.pop("offset_mapping")[0].tolist()
    word_ids, sequence_ids = encoded.word_ids(0), encoded.sequence_ids(0)
    device = next(model.parameters()).device
    input_ids = encoded["input_ids"].to(device)
    mask = encoded["attention_mask"].to(device)
    # Segment ids matter for pair inputs (BERT); decoders have none.
    extra = {"token_type_ids": encoded["token_type_ids"].to(device)} if "token_type_ids" in encoded else {}

    def probabilities(ids, attention):
        expanded = {k: v.expand(ids.shape[0], -1) for k, v in extra.items()}
        return torch.softmax(model(input_ids=ids, attention_mask=attention, **expanded).logits.float(), dim=-1)

    model.eval()
    with torch.no_grad():
        probs = probabilities(input_ids, mask)[0].cpu().numpy().astype(float)
    target = int(probs.argmax())

    # Words: the tokenizer's word boundaries, as character spans of the text (segment 0) or pair (1).
    words: dict[tuple[int, int], dict] = {}
    token_word = {}
    for index, (word, segment) in enumerate(zip(word_ids, sequence_ids)):
        if word is None or segment is None:
            continue
        start, end = offsets[index]
        entry = words.setdefault((segment, word), {"segment": segment, "start": start, "end": end, "score": 0.0})
        entry["start"], entry["end"] = min(entry["start"], start), max(entry["end"], end)
        token_word[index] = (segment, word)
    sources = (text, pair)
    for entry in words.values():
        entry["word"] = sources[entry["segment"]][entry["start"]:entry["end"]]

    record = {"text": text, **({"text_pair": pair} if pair is not None else {}),
              "predicted_label": label_names[target], "probabilities": dict(zip(label_names, probs.tolist()))}
    if method == "occlusion":
        # Leave one word out: the score is how much p(predicted) drops without it.
        variants = []
        for entry in words.values():
            parts = [text, pair]
            source = parts[entry["segment"]]
            parts[entry["segment"]] = source[:entry["start"]] + source[entry["end"]:]
            variants.append(parts)
        texts = [v[0] for v in variants]
        pairs = [v[1] for v in variants] if pair is not None else None
        occluded = predict_proba(model, tokenizer, texts, pairs, max_length=max_length, batch_size=64)
        for entry, row in zip(words.values(), occluded):
            entry["score"] = float(probs[target] - row[target])
        record["method"] = "occlusion: drop in p(predicted) when the word is removed"
    else:
        try:
            from captum.attr import LayerIntegratedGradients
        except ImportError:
            raise ConfigError("method=integrated_gradients needs captum: pip install 'medsweep[explain]'") from None

        special = torch.tensor(tokenizer.get_special_tokens_mask(input_ids[0].tolist(), already_has_special_tokens=True),
                               dtype=torch.bool, device=device)
        fill = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
        baseline = torch.where(special, input_ids[0], torch.full_like(input_ids[0], fill)).unsqueeze(0)
        attributions, delta = LayerIntegratedGradients(probabilities, model.get_input_embeddings()).attribute(
            input_ids, baselines=baseline, target=target, additional_forward_args=(mask,), n_steps=steps,
            return_convergence_delta=True, internal_batch_size=steps)
        token_scores = attributions.sum(dim=-1)[0].detach().cpu().numpy().astype(float)
        for index, key in token_word.items():
            words[key]["score"] += float(token_scores[index])
        with torch.no_grad():
            baseline_probs = probabilities(baseline, mask)[0].cpu().numpy().astype(float)
        record.update(method=f"integrated gradients on the input embeddings (captum), {steps} steps, pad-token baseline",
                      baseline_probabilities=dict(zip(label_names, baseline_probs.tolist())),
                      convergence_delta=float(delta.abs().max()))
    record["words"] = sorted(words.values(), key=lambda w: (w["segment"], w["start"]))
    record["truncated"] = len(offsets) >= max_length
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


def parse_args(argv: Sequence[str]) -> dict:
    return parse_key_values(argv, ARGUMENTS, required=("model", "input", "output"),
                            positive_ints=("max_length", "steps", "limit"))


def run(args: dict) -> Path:
    settings = read_model_settings(args["model"])
    output = Path(args["output"]).expanduser()
    if not output.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {output.parent}")
    pair_column = (args["text_pair_column"] or None) if "text_pair_column" in args else settings["text_pair_column"]
    texts, pairs, ids = read_inputs(args["input"], args.get("text_column") or settings["text_column"], pair_column,
                                    args.get("id_column"))
    limit = args.get("limit", len(texts))
    promoted = load_promoted(args["model"], max_length=args.get("max_length"))
    records = []
    for i in range(min(limit, len(texts))):
        record = explain_one(promoted.model, promoted.tokenizer, texts[i], pairs[i] if pairs else None,
                             promoted.label_names, promoted.max_length, args.get("steps", DEFAULT_STEPS),
                             args.get("method", METHODS[0]))
        if ids is not None:
            record = {"id": ids[i], **record}
        records.append(record)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(json.dumps({"model": str(args["model"]), "version": promoted.version, "explanations": records},
                              indent=2, default=str))
    os.replace(tmp, output)
    write_html(records, output.with_suffix(".html"))
    return output


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body(argv: list[str]) -> int:
        output = run(parse_args(argv))
        print(f"[medsweep] wrote {output} and {output.with_suffix('.html')}", file=sys.stderr)
        return 0

    return tool_main("medsweep.explain", USAGE, argv, body)


if __name__ == "__main__":
    sys.exit(main())
