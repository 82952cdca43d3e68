"""A run's summary (summary.json) as one typed record: what the trainer and its observers
found. The trainer builds it, each observer fills its own fields (Observer.summarize),
`write` writes it last (its presence marks the run finished) and `read` reads it back.

A diverged run is a summary too (`RunSummary.diverged`: status 'diverged', `what` says
where); studies that keep going past a divergence tabulate it as such. The JSON keeps the
field names flat (members' fields beside each other), and fields never filled are left
out of it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from eos_jax import results


@dataclasses.dataclass
class MemberSummary:
    """One member at the run's end. Which fields are set depends on the observers run."""

    label: str
    params_hash: str = ""
    # Evaluate: accuracy on the test set (final: the mean of the last evaluations) and on
    # the held-out set at the last evaluation
    final_accuracy: float | None = None
    last_test_accuracy: float | None = None
    heldout_accuracy: float | None = None
    # MemberDistance: against member 0 at the last record (params_rel_l1: the distance D)
    churn: float | None = None
    softmax_l2: float | None = None
    params_max_ulp: float | None = None
    params_max_abs: float | None = None
    params_mean_abs: float | None = None
    params_max_rel: float | None = None
    params_rel_l1: float | None = None
    params_l2: float | None = None
    params_frac_differ: float | None = None
    # Lyapunov: the tangent's growth exponent per step
    lyapunov_exponent: float | None = None
    # Sharpness
    initial_sharpness: float | None = None
    last_sharpness: float | None = None
    max_sharpness: float | None = None
    sharpness_hvps_per_call: float | None = None
    # Regions ({layer: transitioning fraction}) and Switches ({layer: first step or None})
    initial_transitioning: dict[str, float] | None = None
    last_transitioning: dict[str, float] | None = None
    first_switch: dict[str, int | None] | None = None
    # LinearResponse (member 1 of a twin pair): ||Delta||, ||delta^f||, ||delta^r|| at the end
    delta_end: float | None = None
    response_f_end: float | None = None
    response_r_end: float | None = None

    def add(self, part) -> None:
        """Sets the fields of an observer's typed part (a dataclass whose fields are some of
        this one's: sharpness.SharpnessSummary, regions.RegionsSummary, ...)."""
        self.update(**{f.name: getattr(part, f.name) for f in dataclasses.fields(part)})

    def update(self, **fields: Any) -> None:
        """Sets the named fields (an observer's part); a name that is not a field is a
        TypeError, so a misspelt field cannot pass unnoticed."""
        unknown = sorted(set(fields) - _field_names(MemberSummary))
        if unknown:
            raise TypeError(f"MemberSummary has no field(s) {', '.join(unknown)}")
        for name, value in fields.items():
            setattr(self, name, value)


@dataclasses.dataclass
class RunSummary:
    """A run: 'finished' (summary.json written) or 'diverged' (`what`: where and why)."""

    status: str
    members: list[MemberSummary] = dataclasses.field(default_factory=list)
    steps: int | None = None
    strategy: str | None = None
    init_edits: list | None = None
    seconds_this_session: float | None = None
    resumed_from_step: int | None = None
    # a run stopped at a goal (an observer's request_stop) before its planned steps
    goal: str | None = None
    goal_reached_at_step: int | None = None
    planned_steps: int | None = None
    # over members (the means: over members 1.., against member 0)
    final_accuracy_std: float | None = None
    mean_churn: float | None = None
    mean_softmax_l2: float | None = None
    mean_params_rel_l1: float | None = None
    what: str | None = None
    # with several processes: the one that returned this (unwritten) summary
    process_index: int | None = None

    @classmethod
    def diverged(cls, what: str) -> RunSummary:
        return cls(status="diverged", what=what)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def column(self, field: str) -> list:
        """One MemberSummary field over the members (None where a member lacks it)."""
        if field not in _field_names(MemberSummary):
            raise TypeError(f"MemberSummary has no field {field!r}")
        return [getattr(m, field) for m in self.members]

    def to_json(self) -> dict[str, Any]:
        """The flat JSON object of summary.json (fields never set are left out)."""
        out = _set_fields(self)
        out["members"] = [_set_fields(m) for m in self.members]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        """The inverse of to_json; an unknown key is a TypeError naming it."""
        data = dict(data)
        members = [MemberSummary(**m) for m in data.pop("members", [])]
        return cls(members=members, **data)

    def write(self, workdir: str) -> None:
        """Writes summary.json last (the run is finished) and releases the workdir's lock."""
        results.finish(workdir, self.to_json())

    @classmethod
    def read(cls, workdir: str) -> RunSummary:
        return cls.from_json(results.read_json(os.path.join(workdir, results.SUMMARY)))


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _set_fields(record) -> dict[str, Any]:
    return {
        f.name: getattr(record, f.name)
        for f in dataclasses.fields(record)
        if f.name != "members" and getattr(record, f.name) is not None
    }
