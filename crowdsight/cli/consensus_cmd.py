"""``crowdsight consensus ...``: aggregate votes from any platform, replay retirement policies.

A thin layer over :mod:`consensus`: results on stdout (or ``--out``), progress and summaries on
stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _parse_params(items: tuple[str, ...]) -> dict:
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--param")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _run(fn):
    from consensus import ConsensusError
    try:
        return fn()
    except ConsensusError as exc:
        raise click.ClickException(str(exc)) from exc


def _progress_cb(label: str):
    from rich.progress import Progress

    prog = Progress(transient=True, console=_err_console())
    task = prog.add_task(label, total=None)

    def cb(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)
    return prog, cb


def _err_console():
    from rich.console import Console
    return Console(stderr=True)


@click.group()
def consensus() -> None:
    """Turn volunteers' votes into answers with confidence; tune retirement policies."""


@consensus.command("methods")
def methods_cmd() -> None:
    """List the aggregation methods and their default parameters."""
    from consensus import DEFAULT_METHOD, METHODS
    for name, m in METHODS.items():
        star = " (default)" if name == DEFAULT_METHOD else ""
        params = ", ".join(f"{k}={v}" for k, v in m.defaults.items())
        click.echo(f"{name}{star}\t{m.description}\t{params}")


@consensus.command("aggregate")
@click.argument("votes", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Results CSV (default: stdout).")
@click.option("--method", "-m", default=None,
              help="mv | ds | onecoin | gold | spatial (default: the most accurate overall).")
@click.option("--gold", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV task,label of known answers (seeds skills, clamps those tiles).")
@click.option("--classes", help="Comma-separated true classes, in order (default: every "
              "answer except 'maybe').")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Method parameter, e.g. --param strength=2 (repeatable).")
@click.option("--geojson", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the tiles as RFC 7946 GeoJSON (needs z-x-y task ids).")
@click.option("--volunteers", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write per-volunteer skills with keyed pseudonyms (needs --secret "
              "or CROWDSIGHT_SECRET_KEY).")
@click.option("--secret", envvar="CROWDSIGHT_SECRET_KEY", help="Key for volunteer pseudonyms.")
@click.option("--project", default="votes", show_default=True,
              help="Project name stamped into the GeoJSON metadata.")
def aggregate_cmd(votes: Path, out: Path | None, method: str | None, gold: Path | None,
                  classes: str | None, params: tuple[str, ...], geojson: Path | None,
                  volunteers: Path | None, secret: str | None, project: str) -> None:
    """Aggregate VOTES (CSV task,worker,label, or a MapSwipe results export with
    task_id,user_id,result) into task,label,confidence,p_<class>... rows."""
    from consensus import DEFAULT_METHOD, aggregate, read_truth_csv, read_votes_csv
    from consensus.export import (export_metadata, tile_layer, volunteer_rows, write_geojson,
                                  write_rows_csv)

    if volunteers and not secret:
        raise click.UsageError("--volunteers needs --secret (or CROWDSIGHT_SECRET_KEY): raw "
                               "volunteer ids are never exported")
    from consensus import METHODS

    method = method or DEFAULT_METHOD
    if method not in METHODS:
        raise click.BadParameter(f"{method!r}: choose one of {sorted(METHODS)}",
                                 param_hint="--method")
    kwargs = _parse_params(params)

    def work():
        cls = [c.strip() for c in classes.split(",")] if classes else None
        v = read_votes_csv(votes, **({"classes": cls} if cls else {}))
        if gold:
            mapswipe = "maybe" in v.labels or "bad_imagery" in v.classes
            v = v.with_gold(read_truth_csv(gold, mapswipe=mapswipe))
        prog, cb = _progress_cb(f"{method}: EM")
        with prog:
            res = aggregate(v, method, progress=cb, **kwargs)
        rows = res.to_rows()
        cols = ["task", "label", "confidence", *[f"p_{c}" for c in res.classes], "n_votes",
                "agreement"]
        write_rows_csv(rows, out if out else sys.stdout, cols)
        if geojson:
            write_geojson(tile_layer(res), geojson,
                          export_metadata(project, layer="tiles", result=res))
        if volunteers:
            write_rows_csv(volunteer_rows(res, secret or ""), volunteers)
        return v, res

    v, res = _run(work)
    grid = "yes" if v.tile_xyz is not None else "no"
    extra = ""
    if "spatial_weight" in res.extra:
        extra = f", spatial weight {res.extra['spatial_weight']:.2f}"
    click.echo(f"{v.n_votes} answers, {v.n_tasks} tasks, {v.n_workers} volunteers, classes "
              f"{list(v.classes)}, tile grid: {grid}; method {res.method}: {res.n_iter} "
              f"iterations{'' if res.converged else ' (not converged)'}{extra}", err=True)


@consensus.command("replay")
@click.argument("votes", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--truth", required=True, type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path),
              help="CSV task,label of true answers to score against.")
@click.option("--method", "-m", default="spatial", show_default=True,
              help="Aggregation for skill refits and for scoring both arms (spatial = gold "
              "without z-x-y task ids).")
@click.option("--threshold", default=None, type=float,
              help="Posterior the leading answer needs. Unset threshold/min/max votes take "
              "the default policy's (the labeler service's; docs/consensus.md).")
@click.option("--min-votes", default=None, type=int)
@click.option("--max-votes", default=None, type=int)
@click.option("--final-threshold", default=None, type=float,
              help="Relax the threshold linearly to this at --max-votes [default: constant].")
@click.option("--fixed", default=5, show_default=True, type=int,
              help="Baseline: fixed number of answers per tile.")
@click.option("--refit-every", default=500, show_default=True, type=int,
              help="Re-estimate skills every N accepted answers (0: never).")
def replay_cmd(votes: Path, truth: Path, method: str, threshold: float | None,
               min_votes: int | None, max_votes: int | None, final_threshold: float | None,
               fixed: int, refit_every: int) -> None:
    """Replay VOTES in time order (column time/timestamp, else file order) under a retirement
    policy (default: the one the labeler service uses) and compare votes used and accuracy with
    fixed redundancy. Prints JSON."""
    from consensus import FixedPolicy, RetirementPolicy, read_truth_csv, read_votes_csv, replay

    d = RetirementPolicy()

    def work():
        policy = RetirementPolicy(d.threshold if threshold is None else threshold,
                                  d.min_votes if min_votes is None else min_votes,
                                  d.max_votes if max_votes is None else max_votes,
                                  final_threshold)
        v = read_votes_csv(votes)
        mapswipe = "maybe" in v.labels or "bad_imagery" in v.classes
        t = read_truth_csv(truth, mapswipe=mapswipe)
        return replay(v, policy, t, method=method, baseline=FixedPolicy(fixed),
                      refit_every=refit_every or None)

    rep = _run(work)
    click.echo(json.dumps(rep.summary(), indent=2))
