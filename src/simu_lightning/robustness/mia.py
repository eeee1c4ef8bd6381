"""Membership inference on the forget set against held-out rows, as open-unlearning defines it.

Members are the forget rows, non-members rows of the same kind the model never trained on (the
synthetic benchmark's and TOFU's `holdout` authors; LUME's `member` / `nonmember` documents when the
benchmark folder has them). Every attack scores one example, higher meaning "more likely a non-member"
(mia_scores.py): `loss`, `zlib`, `min_k`, `min_k++` from the answer's log-probabilities; `gradnorm`, the
size of the answer loss's gradient; and, where the run has a retain model (which never saw either set),
`reference`: the loss minus the retain model's loss on the same example (open-unlearning's Reference
attack). AUC: forget rows labelled 0, held-out rows 1, so 1.0 means the forget rows are far more likely
than unseen ones (still memorised) and a model that never saw them sits near what the retain model
gets. `privleak` is MUSE's PrivLeak from the min-k AUC against the retain model's own (mia_retain_model).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from simu_lightning.data.formatting import IGNORE_INDEX, encode_document, encode_example
from simu_lightning.evaluation.metrics import mia_auc
from simu_lightning.evaluation.membership import ATTACKS, gradient_norms, privleak, scores, token_stats
from simu_lightning.utils.phase_progress import phase

log = logging.getLogger(__name__)


def qa_rows(split) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for r in split]


@dataclass
class MembershipInference:
    """The attacks' AUCs, forget against held out (`robustness.families.mia`)."""

    k: float = 0.4
    gradnorm: bool = True  # a backward pass per example
    p: float = 2.0  # the gradient norm's p
    needs_retain_model = True  # (the reference attack and PrivLeak; without one they are left out)

    def before(self, context, retain_model=None) -> dict:
        """On the retain model (the reference attack's baseline, and PrivLeak's), then on the target: how
        recognisable its training rows are to begin with. Returns the retain model's per-example scores,
        which the attack after unlearning reads."""
        retain_rows = None
        if retain_model is not None and (found := self.sets(context)) is not None:
            retain_rows = {
                split: self.per_example(context, retain_model, rows, found[1]) for split, rows in found[0].items()
            }
            self.record(context, "mia_retain_model", retain_rows, None)
        self.run(context, retain_rows, name="mia_target")
        return {"retain_rows": retain_rows}

    def after(self, context, found: dict | None = None) -> None:
        self.run(context, (found or {}).get("retain_rows"))

    def sets(self, context) -> tuple[dict[str, list[dict]], bool] | None:
        """({"forget": rows, "holdout": rows}, whether the rows are whole documents), each row a
        {question, answer}; None when the benchmark has no held-out rows."""
        benchmark = context.benchmark
        if "holdout" in benchmark.splits:
            return {"forget": qa_rows(benchmark[benchmark.forget]), "holdout": qa_rows(benchmark["holdout"])}, False
        if "mia_member" in benchmark.splits:
            documents = {"forget": benchmark["mia_member"], "holdout": benchmark["mia_nonmember"]}
            return {
                name: [{"question": "", "answer": d} for d in split["document"]] for name, split in documents.items()
            }, True
        return None

    def per_example(self, context, model, rows: list[dict], documents: bool) -> list[dict]:
        tokenizer, settings = context.tokenizer, context.settings
        if documents:
            encoded = [encode_document(tokenizer, r["answer"], settings.max_length) for r in rows]
        else:
            encoded = [
                encode_example(tokenizer, context.fmt, r["question"], r["answer"], settings.max_length) for r in rows
            ]
        with phase("membership attack: token statistics", len(encoded), "rows"):
            stats = token_stats(model, encoded, tokenizer.pad_token_id, settings.batch_size, tokenizer.eos_token_id)
        texts = [
            tokenizer.decode([t for t in e["labels"] if t != IGNORE_INDEX], skip_special_tokens=True) for e in encoded
        ]
        scored = [{**row, **scores(s, text, self.k)} for row, s, text in zip(rows, stats, texts)]
        if self.gradnorm:
            with phase("membership attack: gradient norms", len(encoded), "rows"):
                norms = gradient_norms(model, encoded, tokenizer.pad_token_id, self.p, tokenizer.eos_token_id)
            for row, norm in zip(scored, norms):
                row["gradnorm"] = norm
        return scored

    def record(self, context, name: str, scored: dict[str, list[dict]], retain_rows: dict | None) -> dict[str, float]:
        attacks = [a for a in (*ATTACKS, "gradnorm", "reference") if a in scored["forget"][0]]
        aucs = {
            f"{a}_auc": mia_auc([r[a] for r in scored["forget"]], [r[a] for r in scored["holdout"]]) for a in attacks
        }
        if retain_rows is not None:
            retain_auc = mia_auc(*([r["min_k"] for r in retain_rows[s]] for s in ("forget", "holdout")))
            aucs["privleak"] = privleak(aucs["min_k_auc"], retain_auc)
        rows = [
            {"split": split, "stage": name, "index": i, **row}
            for split, rows in scored.items()
            for i, row in enumerate(rows)
        ]
        context.record(name, {"forget_vs_holdout": aucs}, rows)
        log.info("robustness: %s: %s", name, ", ".join(f"{a} {v:.3f}" for a, v in aucs.items() if not math.isnan(v)))
        return aucs

    def run(self, context, retain_rows: dict | None, name: str = "mia") -> None:
        found = self.sets(context)
        if found is None:
            log.warning(
                "robustness: membership inference skipped, benchmark %s has no held-out rows "
                "(a holdout split, or LUME's member.jsonl / nonmember.jsonl)",
                context.benchmark.name,
            )
            return
        sets, documents = found
        scored = {split: self.per_example(context, context.model, rows, documents) for split, rows in sets.items()}
        if retain_rows is not None:  # the reference attack: the loss beyond the retain model's
            for split, rows in scored.items():
                for row, retain in zip(rows, retain_rows[split]):
                    row["reference"] = row["loss"] - retain["loss"]
        self.record(context, name, scored, retain_rows)
