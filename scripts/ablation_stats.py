"""Seeds → mean ± sd per variant, and the paper's claims judged by two standard errors (issue 23).

A variant's figure is the mean over its seeds, with the sample standard deviation sd and n seeds. Two
variants differ only when their means are further apart than 2·SE, SE = sqrt(sd_a²/n_a + sd_b²/n_b)
(the standard error of the difference of the means); with fewer than two seeds on either side there is
no error bar and nothing counts. Each claim line ends with **agree**, **disagree** or **within noise**
and gives the numbers it was judged on.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from ablation_runs import CORE_ATTRIBUTES, Run, metrics

IMAGE_METRICS = (
    ("cider", "caption CIDEr"),
    ("caption_accuracy", "caption attribute accuracy"),
    ("generation_accuracy", "generation accuracy"),
)
VERDICT = {1: "**agree**", -1: "**disagree**", 0: "**within noise**"}


@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.n else float("nan")

    @property
    def sd(self) -> float:
        """The sample standard deviation (n - 1), NaN below two seeds."""
        return statistics.stdev(self.values) if self.n >= 2 else float("nan")

    @property
    def var_of_mean(self) -> float:
        """sd² / n: the variance of the mean (NaN below two seeds)."""
        return self.sd**2 / self.n if self.n >= 2 else float("nan")

    def text(self, digits: int = 3) -> str:
        if not self.n:
            return "n/a"
        return f"{self.mean:.{digits}f}" + ("" if self.n < 2 else f" ± {self.sd:.{digits}f}")


def stat(values: list[float]) -> Stat:
    return Stat([v for v in values if v is not None and not math.isnan(v)])


@dataclass
class Group:
    """The runs of one variant (one per seed) and their figures."""

    variant: str
    runs: list[Run]
    figures: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.figures:
            self.figures = [metrics(r) for r in self.runs]

    @property
    def model(self) -> dict[str, Any]:
        return self.runs[0].model if self.runs else {}

    @property
    def n(self) -> int:
        return len(self.figures)

    def stat(self, key: str) -> Stat:
        return stat([f.get(key, float("nan")) for f in self.figures])

    def by_seed(self, key: str) -> dict[int, float]:
        return {r.seed: f.get(key, float("nan")) for r, f in zip(self.runs, self.figures)}


def judge(diff: float, var_a: float, var_b: float) -> tuple[int, float]:
    """(+1 / −1 when `diff` is beyond 2·SE above / below zero, else 0; the 2·SE threshold)."""
    threshold = 2 * math.sqrt(var_a + var_b)
    if math.isnan(diff) or math.isnan(threshold):
        return 0, threshold
    return (0 if abs(diff) <= threshold else (1 if diff > 0 else -1)), threshold


def compare_line(
    label: str, a: Group, b: Group, key: str, expect: int = 1, digits: int = 3, by_seed: bool = False
) -> str:
    """One claim line: `a` against `b` on `key`; the paper expects a > b (expect 1) or a < b (−1).

    `by_seed`: also count the seeds (paired by seed) in which `a` is higher."""
    sa, sb = a.stat(key), b.stat(key)
    sign, threshold = judge(sa.mean - sb.mean, sa.var_of_mean, sb.var_of_mean)
    bar = "no error bar with one seed" if math.isnan(threshold) else f"2·SE {threshold:.{digits}f}"
    if by_seed:
        va, vb = a.by_seed(key), b.by_seed(key)
        seeds = sorted(set(va) & set(vb))
        bar += f"; {a.variant} higher in {sum(va[s] > vb[s] for s in seeds)} of {len(seeds)} seeds"
    return (
        f"  - {label}: {a.variant} {sa.text(digits)} vs {b.variant} {sb.text(digits)} (n {sa.n}/{sb.n}; "
        f"difference {sa.mean - sb.mean:+.{digits}f}, {bar}) — {VERDICT[sign * expect]}"
    )


def interpolated(points: list[Group], key: str, flops: float) -> tuple[float, float, str]:
    """(mean, variance of the mean, how) of `key` at `flops` from runs at other FLOPs (linear in log FLOPs).

    Outside the runs' range: the nearest run's figure, said so."""
    pts = sorted(((g.stat("flops").mean, g.stat(key)) for g in points), key=lambda p: p[0])
    pts = [(x, s) for x, s in pts if x > 0 and not math.isnan(x)]
    if not pts:
        return float("nan"), float("nan"), "no FLOPs counted"
    for (x1, s1), (x2, s2) in zip(pts, pts[1:]):
        if x1 <= flops <= x2:
            w = (math.log(x2) - math.log(flops)) / (math.log(x2) - math.log(x1)) if x2 > x1 else 1.0
            var = w**2 * s1.var_of_mean + (1 - w) ** 2 * s2.var_of_mean
            return w * s1.mean + (1 - w) * s2.mean, var, f"interpolated, weight {w:.2f} on the cheaper run"
    x, s = min(pts, key=lambda p: abs(math.log(p[0]) - math.log(flops)))
    return s.mean, s.var_of_mean, f"outside Transfusion's FLOPs range: its run at {x / 1e12:.2f} T, not interpolated"


def equal_flops_lines(lm: Group, transfusion: list[Group]) -> list[str]:
    flops = lm.stat("flops").mean
    out = []
    for key, label in IMAGE_METRICS:
        s = lm.stat(key)
        mean, var, how = interpolated(transfusion, key, flops)
        sign, threshold = judge(s.mean - mean, s.var_of_mean, var)
        bar = "no error bar with one seed" if math.isnan(threshold) else f"2·SE {threshold:.3f}"
        out.append(
            f"  - {label}: lmfusion {s.text()} vs Transfusion at {flops / 1e12:.2f} T FLOPs {mean:.3f} ({how}; "
            f"difference {s.mean - mean:+.3f}, {bar}) — {VERDICT[sign]}"
        )
    return out


def _ratio(a: Group, b: Group, key: str) -> float:
    x, y = a.stat(key).mean, b.stat(key).mean
    return x / y if y else float("nan")


def image_claim(a: Group, b: Group, claim: str, by_seed: bool = False) -> list[str]:
    return [f"- {claim}"] + [compare_line(label, a, b, key, by_seed=by_seed) for key, label in IMAGE_METRICS]


def claims(groups: dict[str, Group]) -> list[str]:
    """The paper's claims whose variants were run, each judged metric by metric."""
    out: list[str] = []
    lm = groups.get("lmfusion")
    tf = [groups[n] for n in ("transfusion", "transfusion-2x") if n in groups]
    if lm and "from-scratch" in groups:
        out += image_claim(
            lm,
            groups["from-scratch"],
            "Paper: LMFusion beats a model trained from scratch on image understanding and generation "
            "(from-scratch: the same data mix as LMFusion, mostly image–caption examples, equal steps)",
        )
        sc = groups["from-scratch"]
        out.append(
            f"- Paper: LMFusion's training costs fewer FLOPs (its text weights get no weight gradients); at "
            f"equal steps and batch it costs {_ratio(lm, sc, 'flops'):.2f}× from-scratch's FLOPs"
        )
        out.append(compare_line("train FLOPs (T)", lm, sc, "flops_t", expect=-1, digits=2))
    for g in tf if lm else []:
        img, fl = _ratio(g, lm, "image_examples"), _ratio(g, lm, "flops")
        steps = "equal steps" if g.variant == "transfusion" else "2× the steps"
        out += image_claim(
            lm,
            g,
            f"Paper: LMFusion beats Transfusion (from scratch, half its tokens text-only) — {g.variant}: {steps}, "
            f"{img:.2f}× LMFusion's image examples, {fl:.2f}× its training FLOPs",
        )
    if lm and tf:
        out.append(
            "- Paper: LMFusion beats Transfusion at equal training FLOPs (Transfusion's figures read off at "
            "LMFusion's FLOPs between its runs)"
        )
        out += equal_flops_lines(lm, tf)
    for better, worse, what in (
        ("lmfusion", "ffn-only", "deep separation (attention + FFN experts) beats shallow (FFN only)"),
        ("ffn-only", "dense", "shallow separation beats a dense, shared model"),
        ("lmfusion", "dense", "deep separation beats a dense, shared model"),
        ("lmfusion", "random-init", "image experts copied from the text modules start better than random ones"),
    ):
        if better in groups and worse in groups:
            out += image_claim(groups[better], groups[worse], f"Paper: {what}", by_seed=worse == "random-init")
    if lm and "unfrozen" in groups:
        out.append(
            "- Check (no direction claimed here): training the text modules too (unfrozen, at optim.text_lr) "
            "against keeping them frozen; **agree** below means unfrozen scores higher"
        )
        out += [compare_line(label, groups["unfrozen"], lm, key) for key, label in IMAGE_METRICS]
    out += text_claims(groups)
    out += chance_lines(list(groups.values()))
    return out


def text_claims(groups: dict[str, Group]) -> list[str]:
    out = []
    frozen = [g for g in groups.values() if g.model.get("freeze_text") and not g.model.get("from_scratch")]
    if frozen:
        runs = sum(g.n for g in frozen)
        same = sum(int(g.stat("text_identical").mean * g.n + 0.5) for g in frozen)
        out.append(
            "- Paper: frozen text modules keep the base LM's text ability exactly: text-suite log-likelihoods of "
            f"{', '.join(g.variant for g in frozen)} bit-identical to the base's in {same} of {runs} runs — "
            + VERDICT[1 if same == runs else -1]
        )
    trains_text = [g for g in groups.values() if not g.model.get("freeze_text") and not g.model.get("from_scratch")]
    if trains_text:
        out.append("- Paper: training the base LM's text weights on image data costs text ability (text accuracy)")
        for g in trains_text:
            base = Group("base LM", g.runs, [{"text_accuracy": f["text_accuracy_base"]} for f in g.figures])
            out.append(compare_line(f"{g.variant} text accuracy", g, base, "text_accuracy", expect=-1))
    scratch = [g for g in groups.values() if g.model.get("from_scratch")]
    if scratch and "lmfusion" in groups:
        out.append(
            "- Paper: LMFusion keeps the base LM's language, a model trained from scratch has to learn it "
            "(text accuracy)"
        )
        out += [compare_line("text accuracy", groups["lmfusion"], g, "text_accuracy") for g in scratch]
    if "transfusion" in groups and "from-scratch" in groups:
        out.append(
            "- Check (not a claim of the paper): Transfusion's text half teaches it language (text accuracy against "
            "from-scratch; **agree**: transfusion higher)"
        )
        out.append(compare_line("text accuracy", groups["transfusion"], groups["from-scratch"], "text_accuracy"))
    return out


def chance_lines(groups: list[Group]) -> list[str]:
    """Which generation attributes every variant's mean puts above (or below) the checker's chance level."""
    if not groups or not groups[0].runs:
        return []
    chance = groups[0].runs[0].shapes.get("generation", {}).get("chance", {})
    mean = {(g.variant, a): g.stat(f"generation_{a}").mean for g in groups for a in CORE_ATTRIBUTES}
    above = [a for a in CORE_ATTRIBUTES if a in chance and all(mean[g.variant, a] > chance[a] for g in groups)]
    below = [a for a in CORE_ATTRIBUTES if a in chance and all(mean[g.variant, a] < chance[a] for g in groups)]
    lines = []
    if above:
        lines.append(
            f"- Generation above the checker's chance level in every variant (seed means): {', '.join(above)}."
        )
    if below:
        lines.append(
            f"- Generation *below* chance in every variant (seed means): {', '.join(below)} — the checker does not "
            "recognise these attributes in the generated images yet, so they do not separate the variants."
        )
    return lines
