"""``sv.<source>.*/L`` (singular-value measures), ``orth_err/L`` and the full ``sv.<source>`` spectra."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from probe.diagnostics.measures import as_matrix, orthogonality_error
from probe.diagnostics.quantity import Needs, PostStep, Quantity, Records, option_error
from probe.diagnostics.schedule import Schedule
from probe.diagnostics.spectra import not_lifted_fraction
from probe.diagnostics.spectra_pool import SpectraPool, SpectrumRequest

SOURCES = ("weight", "update", "pre_orth", "post_orth")


class Spectra(Quantity):
    """Singular values of each matrix's weight, its update ΔW, and (our Muon/NorMuon) the momentum before
    and the result after orthogonalization.

    Exact (``svdvals`` via the Gram eigenvalues, see ``spectra``) up to ``full_max`` on the smaller side
    and ``full_max_numel`` elements, else a randomized top-``top_k`` (the run says which: a truncated
    spectrum has no ``sv.*.not_lifted``). CPU spectra run on ``workers`` threads (``spectra_pool``)
    while the training thread does the other measures planned for the step (``overlaps_others``);
    GPU spectra run from the training thread.

    Args:
        sources: which of ``weight update pre_orth post_orth`` get spectra (the internals ones only
            exist for ``probe.optim``'s Muon/NorMuon).
        full_max, full_max_numel, top_k: exact up to these sizes, else top-k.
        workers: CPU spectra threads, the training thread one of them (default: torch's intra-op thread
            count, at most 8).
    """

    name = "spectra"
    priority = 40
    overlaps_others = True

    def __init__(
        self,
        every: int | Schedule | None = 50,
        *,
        vectors_every: int | Schedule | None = 200,
        sources: Sequence[str] = SOURCES,
        full_max: int = 1024,
        full_max_numel: int = 1 << 22,
        top_k: int = 32,
        workers: int | None = None,
    ) -> None:
        super().__init__(every, vectors_every=vectors_every)
        unknown = set(sources) - set(SOURCES)
        if unknown:
            raise option_error(self.name, "sources (spectra_sources)", sorted(unknown), f"allowed: {list(SOURCES)}")
        if top_k < 1:
            raise option_error(self.name, "top_k", top_k, "must be >= 1")
        self.sources = tuple(sources)
        self.full_max = full_max
        self.full_max_numel = full_max_numel
        self.top_k = top_k
        self._pool = SpectraPool(workers)
        self._needs = (Needs.INTERNALS if {"pre_orth", "post_orth"} & set(self.sources) else Needs.NONE) | (
            Needs.DELTA_MATRICES if "update" in self.sources else Needs.NONE)

    def needs(self, step: int) -> Needs:
        return self._needs

    def measure(self, ctx: PostStep, out: Records, *, meanwhile: Callable[[], None] | None = None) -> None:
        keys: list[str] = []
        values: list[Tensor] = []
        jobs: list[tuple[str, str]] = []  # (source, layer name) of each request
        requests: list[SpectrumRequest] = []
        for layer in ctx.layers:
            if not layer.is_matrix:
                continue
            sources: dict[str, Tensor] = {}
            if "weight" in self.sources:
                sources["weight"] = as_matrix(layer.weight(), layer.neuron_axis)
            delta = ctx.delta_of(layer)
            if "update" in self.sources and delta is not None:
                sources["update"] = as_matrix(delta, layer.neuron_axis)
            entry = ctx.internals.get(layer.param) or {}
            for src in ("pre_orth", "post_orth"):
                if src in self.sources and src in entry:
                    sources[src] = entry[src].reshape(entry[src].shape[0], -1)
            for src, mat in sources.items():
                jobs.append((src, layer.name))
                requests.append(SpectrumRequest(
                    mat,
                    full_max_dim=self.full_max if mat.numel() <= self.full_max_numel else 0,
                    top_k=self.top_k,
                    seed=ctx.seed_for(len(requests)),
                ))
            if "post_orth" in entry:
                keys.append(f"orth_err/{layer.name}")
                values.append(orthogonality_error(entry["post_orth"]))
        out.scalars(keys, values)
        vectors = self.name in ctx.vectors
        by_device: dict[torch.device, tuple[list[str], list[Tensor]]] = {}  # one record per device
        for group in self._pool.compute_groups(requests, meanwhile):
            rows = [jobs[i] for i in group.indices]
            dev_keys, parts = by_device.setdefault(group.spectrum.values.device, ([], []))
            dev_keys += [f"sv.{src}.{q}/{name}" for q in group.stats for src, name in rows]
            parts.append(torch.stack(list(group.stats.values())).reshape(-1))  # measure-major, as the keys
            pre_orth = [b for b, (src, _) in enumerate(rows) if src == "pre_orth"]
            if pre_orth and not group.spectrum.truncated:
                dev_keys += [f"sv.pre_orth.not_lifted/{rows[b][1]}" for b in pre_orth]
                fractions = not_lifted_fraction(group.spectrum)
                parts.append(torch.stack([fractions[b] for b in pre_orth]))  # views: no index tensor to copy
            if vectors:
                out.arrays([(f"sv.{src}", name) for src, name in rows], group.spectrum.values)
        for dev_keys, parts in by_device.values():
            out.scalars(dev_keys, torch.cat(parts))

    def close(self) -> None:
        self._pool.close()
