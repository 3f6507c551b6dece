"""Benchmark results for people (tables rounded for reading) and for files (plain dicts for ``json.dump``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict, Optional, Sequence

from .machine import machine_description  # its former home: the old import path keeps working

__all__ = ["as_json", "format_report", "loader_report_json", "format_loader_report", "machine_description"]


def as_json(result: Dict[str, Any]) -> Dict[str, Any]:
    """The result with measurements as plain dicts (for ``json.dump``)."""
    out = dict(result)
    out["measurements"] = {k: asdict(v) for k, v in result["measurements"].items()}
    return out


def _mb(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _ratio(ratios: Dict[str, float], name: str, is_reference: bool) -> str:
    return f"{ratios[name]:.3f}x" if name in ratios else ("1" if is_reference and ratios else "")


def format_report(result: Dict[str, Any]) -> str:
    """A table of the measurements, rounded for people, with the compile times, the agreement, the
    machine (CPU features, threads, load) and what the memory and compile-time figures mean."""
    c, env = result["config"], result.get("environment", {})
    lines = [
        f"{c['arch']} {c['head']} R{c['depth']} {c['mode']} on {c['device']} ({c['machine']}), "
        f"{c['threads']} threads, input {c['image_size'][0]}x{c['image_size'][1]} x{c['batch']}"
        + (f", test size {c['min_size_test']}" if c["mode"] == "inference" else "")
        + (", random weights" if c["random_weights"] else "")
    ]
    if env.get("load_average_after"):
        lines.append(f"load average {_load_text(env.get('load_average_before'), env['load_average_after'])}")
    meas = result["measurements"]
    width = max([len("model")] + [len(k) for k in meas]) + 2
    lines.append(
        f"{'model':<{width}}{'img/s':>8}{'median s':>10}{'p25-p75 s':>14}{'min-max s':>14}{'GFLOP/img':>11}"
        f"{'GFLOP/s':>9}{'peak MB':>9}{'steady MB':>11}{'vs eager':>10}{'vs compile':>12}"
    )
    eager, compiled = result.get("ratios", {}), result.get("ratios_vs_compile", {})
    for name, m in meas.items():
        lines.append(
            f"{name:<{width}}{m.images_per_s:>8.3f}{m.latency_median:>10.3f}"
            f"{f'{m.latency_p25:.2f}-{m.latency_p75:.2f}':>14}{f'{m.latency_min:.2f}-{m.latency_max:.2f}':>14}"
            f"{m.flops_per_image / 1e9:>11.1f}{m.gflops_per_s:>9.1f}{_mb(m.peak_memory_mb):>9}"
            f"{_mb(m.steady_peak_memory_mb):>11}{_ratio(eager, name, m.model == 'torchvision'):>10}"
            f"{_ratio(compiled, name, m.model == 'torchvision+compile'):>12}"
        )
    amortized = result.get("ratios_vs_compile_amortized", {})
    for name, m in meas.items():
        if m.compile_s is not None:
            lines.append(
                f"{name}: compile time {m.compile_s:.1f} s ({m.compile_calls} compiling call(s), "
                f"{m.compile_cache_hits} graph(s) from inductor's cache); amortized over compilation + "
                f"100 calls {m.amortized_latency:.3f} s per image"
            )
    for name, r in amortized.items():
        lines.append(f"{name} against torchvision+compile amortized over 100 calls: {r:.3f}x")
    reference = result.get("agreement_reference", "torchvision")
    for name, a in result.get("agreement", {}).items():
        lines.append(
            f"agreement of {name} with {reference} (same label, IoU > 0.9): {100 * a['fraction']:.1f}% "
            f"of {sum(result['detections'][name])} detections; max box difference "
            f"{a['max_box_difference_px']:.2e} px"
        )
    if not eager and not compiled:
        lines.append(f"reference: {result['reference']}")
    definitions = result.get("definitions", {})
    if any(m.compile_s is not None for m in meas.values()):
        lines.append(f"{definitions['compile_time']}; inductor cache: {c.get('compile_cache')}")
        if c.get("compile_backend") not in (None, "inductor"):
            backend = c["compile_backend"]
            lines.append(f"torch.compile backend: {backend} (not inductor: not what a user's compile gives)")
    if definitions.get("memory"):
        lines.append(definitions["memory"])
    spreads = [
        f"{name} {_mb(min(m.peak_memory_runs_mb))}-{_mb(max(m.peak_memory_runs_mb))}"
        for name, m in meas.items()
        if len(m.peak_memory_runs_mb) > 1
    ]
    if spreads:
        lines.append(
            f"peak MB is the median of {c.get('memory_repeats')} fresh processes per model, interleaved; "
            f"their range: {'; '.join(spreads)}"
        )
    return "\n".join(lines) + "\n"


def loader_report_json(result: Dict[str, Any]) -> Dict[str, Any]:
    """The result with measurements as plain dicts (for ``json.dump``)."""
    return {**result, "measurements": [asdict(m) for m in result["measurements"]]}


def _load_text(before: Optional[Sequence[float]], after: Sequence[float]) -> str:
    """``uptime``'s three figures after the run, with the 1-minute one before it when known."""
    text = "{:.2f} {:.2f} {:.2f}".format(*after)
    return f"{before[0]:.2f} before, {text} after" if before else text


def format_loader_report(result: Dict[str, Any]) -> str:
    """The measurements as a table, rounded for people."""
    c, d = result["config"], result["data"]
    if d["source"] == "generated":
        sizes = " and ".join(f"{w}x{h}" for h, w in d["sizes"])
        source = (
            f"a generated COCO-layout folder ({d['reason']}): {d['num_images']} JPEGs of {sizes}, "
            f"mean {d['mean_file_kb']:.0f} KB, {d['objects_per_image']:.1f} objects per image"
        )
    else:
        source = f"the config's data.train ({', '.join(d['train'])}), {d['images']} images"
    sizes = c["min_size_train"]
    short = f"{sizes[0]}" if len(sizes) == 1 else f"one of {sizes[0]}..{sizes[-1]} ({len(sizes)} sizes)"
    lines = [
        f"training loader on {source}",
        f"input: short side {short}, long side <= {c['max_size_train']}, flip {c['hflip_prob']:g}, "
        f"colour jitter {c['color_jitter']:g}, masks {'yes' if c['masks'] else 'no'}, "
        f"{c['images_per_batch']} images per batch, pin_memory {'on' if c['pin_memory'] else 'off'}",
        f"{c['rounds']} timed rounds of {c['images_per_round']} images after {c['warmup']} untimed, per worker count; "
        f"{c['machine']}, {c['cpus']} CPUs available"
        + (
            f", load average {_load_text(c.get('load_average_before'), c['load_average'])}"
            if c.get("load_average")
            else ""
        ),
        f"{'workers':<10}{'img/s median':>14}{'slowest round':>15}{'per worker':>12}{'CPU ms/img':>12}{'images':>8}"
        f"{'mean size':>12}",
    ]
    for m in result["measurements"]:
        name = "0 (main)" if m.workers == 0 else str(m.workers)
        h, w = m.mean_image_hw
        cpu = "n/a" if m.cpu_ms_per_image is None else f"{m.cpu_ms_per_image:.1f}"
        lines.append(
            f"{name:<10}{m.images_per_s_median:>14.1f}{m.images_per_s_min:>15.1f}"
            f"{m.images_per_s_per_worker:>12.1f}{cpu:>12}{sum(m.round_images):>8d}{f'{h:.0f}x{w:.0f}':>12}"
        )
    lines.append(
        "CPU ms/img: CPU time of all the loader's processes per image (start-up included); 1000 / it is "
        "what one otherwise idle core supplies"
    )
    return "\n".join(lines) + "\n"
