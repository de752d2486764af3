"""Expert review queue, review decisions and promotion of tiles to gold.

Queues (``kind``):

* ``unresolved`` — tiles the crowd could not settle (``tiles.state == 'unresolved'``: retired
  by the policy without reaching agreement);
* ``flagged``    — tiles with at least one volunteer note (``labels.flag_note``), notes included;
* ``sample``     — a reproducible random sample of confident retired tiles, for quality control;
* ``decided``    — tiles with a current expert decision.

A decision is stored in ``review_decisions`` (one per tile) and written to the audit log in the
same transaction; :mod:`labeler.dashboard.results` applies it over the crowd's answer.
"""

from __future__ import annotations

import random
from typing import Any

import sqlalchemy as sa

from labeler.dashboard.models import iso, ReviewDecision
from labeler.errors import NotFound, ValidationError
from labeler.models import Label, Tile, utcnow
from labeler.projects import ProjectConfig, audit

TILES = Tile.__table__
LABELS = Label.__table__
DECISIONS = ReviewDecision.__table__

QUEUES = ("unresolved", "flagged", "sample", "decided")
#: Confidence from which a retired tile counts as "confident" for the QC sample.
SAMPLE_MIN_CONFIDENCE = 0.8
MAX_EXPLANATION = 500


def _tile_json(cfg: ProjectConfig, r: Any) -> dict[str, Any]:
    return {
        "tile_id": r.id, "z": r.z, "x": r.x, "y": r.y,
        "bounds": [r.west, r.south, r.east, r.north],
        "image_urls": cfg.image_urls(r.z, r.x, r.y, list(r.layers or [])),
        "state": r.state,
        "label_count": r.label_count,
        "answer_counts": dict(r.answer_counts or {}),
        "consensus_answer": r.consensus_answer,
        "confidence": None if r.confidence is None else round(float(r.confidence), 4),
        "gold_answer": r.gold_answer,
        "gold_explanation": r.gold_explanation,
        "tutorial": bool(r.tutorial),
    }


def _decision_json(d: Any) -> dict[str, Any] | None:
    if d is None or d.answer is None:
        return None
    return {"answer": d.answer, "note": d.note, "source": d.source,
            "decided_by": d.decided_by, "decided_at": iso(d.decided_at),
            "crowd_answer": d.crowd_answer}


def _with_decisions(cfg: ProjectConfig) -> sa.Select[Any]:
    return (
        sa.select(TILES, DECISIONS.c.answer.label("d_answer"), DECISIONS.c.note.label("d_note"),
                  DECISIONS.c.source.label("d_source"), DECISIONS.c.decided_by.label("d_by"),
                  DECISIONS.c.decided_at.label("d_at"), DECISIONS.c.crowd_answer.label("d_crowd"))
        .select_from(TILES.outerjoin(DECISIONS, DECISIONS.c.tile_id == TILES.c.id))
        .where(TILES.c.project_id == cfg.id)
    )


def _row_decision(r: Any) -> dict[str, Any] | None:
    if r.d_answer is None:
        return None
    return {"answer": r.d_answer, "note": r.d_note, "source": r.d_source, "decided_by": r.d_by,
            "decided_at": iso(r.d_at), "crowd_answer": r.d_crowd}


def _notes(conn: sa.Connection, tile_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    if not tile_ids:
        return {}
    rows = conn.execute(
        sa.select(LABELS.c.tile_id, LABELS.c.flag_note, LABELS.c.answer, LABELS.c.skipped,
                  LABELS.c.created_at)
        .where(LABELS.c.tile_id.in_(tile_ids), LABELS.c.flag_note.is_not(None))
        .order_by(LABELS.c.id)
    ).all()
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r.tile_id, []).append({
            "note": r.flag_note, "answer": None if r.skipped else r.answer,
            "at": iso(r.created_at),
        })
    return out


def queue_counts(conn: sa.Connection, cfg: ProjectConfig) -> dict[str, int]:
    undecided = TILES.c.id.not_in(sa.select(DECISIONS.c.tile_id).where(
        DECISIONS.c.project_id == cfg.id))
    unresolved = conn.execute(sa.select(sa.func.count()).select_from(TILES).where(
        TILES.c.project_id == cfg.id, TILES.c.state == "unresolved", undecided)).scalar_one()
    flagged = conn.execute(
        sa.select(sa.func.count(sa.distinct(LABELS.c.tile_id)))
        .where(LABELS.c.project_id == cfg.id, LABELS.c.flag_note.is_not(None),
               LABELS.c.tile_id.not_in(sa.select(DECISIONS.c.tile_id).where(
                   DECISIONS.c.project_id == cfg.id)))
    ).scalar_one()
    confident = conn.execute(sa.select(sa.func.count()).select_from(TILES).where(
        TILES.c.project_id == cfg.id, TILES.c.state == "retired",
        TILES.c.confidence >= SAMPLE_MIN_CONFIDENCE, undecided)).scalar_one()
    decided = conn.execute(sa.select(sa.func.count()).select_from(DECISIONS).where(
        DECISIONS.c.project_id == cfg.id)).scalar_one()
    return {"unresolved": int(unresolved), "flagged": int(flagged),
            "sample": int(confident), "decided": int(decided)}


def review_queue(conn: sa.Connection, cfg: ProjectConfig, kind: str, *, limit: int = 20,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Items of one queue, each a tile dict plus ``notes`` and ``decision``."""
    if kind not in QUEUES:
        raise ValidationError(f"'queue' must be one of {', '.join(QUEUES)}", field="queue")
    limit = max(1, min(int(limit), 200))
    q = _with_decisions(cfg)
    if kind == "unresolved":
        q = q.where(TILES.c.state == "unresolved", DECISIONS.c.id.is_(None)).order_by(TILES.c.id)
    elif kind == "flagged":
        flagged = sa.select(LABELS.c.tile_id).where(
            LABELS.c.project_id == cfg.id, LABELS.c.flag_note.is_not(None))
        q = q.where(TILES.c.id.in_(flagged), DECISIONS.c.id.is_(None)).order_by(TILES.c.id)
    elif kind == "decided":
        q = q.where(DECISIONS.c.id.is_not(None)).order_by(DECISIONS.c.decided_at.desc())
    else:  # sample: draw ids in Python so the sample is the same on SQLite and PostgreSQL
        ids = conn.execute(
            sa.select(TILES.c.id).select_from(
                TILES.outerjoin(DECISIONS, DECISIONS.c.tile_id == TILES.c.id))
            .where(TILES.c.project_id == cfg.id, TILES.c.state == "retired",
                   TILES.c.confidence >= SAMPLE_MIN_CONFIDENCE, DECISIONS.c.id.is_(None))
            .order_by(TILES.c.id)
        ).scalars().all()
        chosen = sorted(random.Random(seed).sample(list(ids), min(limit, len(ids))))
        q = q.where(TILES.c.id.in_(chosen)).order_by(TILES.c.id)
    rows = conn.execute(q.limit(limit)).all()
    notes = _notes(conn, [r.id for r in rows])
    items = []
    for r in rows:
        item = _tile_json(cfg, r)
        item["notes"] = notes.get(r.id, [])
        item["decision"] = _row_decision(r)
        items.append(item)
    return items


def _get_tile(conn: sa.Connection, cfg: ProjectConfig, tile_id: int) -> Any:
    row = conn.execute(sa.select(TILES).where(TILES.c.id == tile_id,
                                              TILES.c.project_id == cfg.id)).first()
    if row is None:
        raise NotFound(f"no tile {tile_id} in project '{cfg.slug}'", field="tile_id")
    return row


def _check_answer(cfg: ProjectConfig, answer: Any, field: str = "answer") -> str:
    if not isinstance(answer, str) or answer not in cfg.answer_values:
        raise ValidationError(
            f"'{field}' must be one of this project's answers: {', '.join(sorted(cfg.answer_values))}",
            field=field)
    return answer


def _check_explanation(text: Any, field: str = "explanation") -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("a gold tile needs a feedback sentence telling volunteers why "
                              "this is the right answer", field=field)
    if len(text) > MAX_EXPLANATION:
        raise ValidationError(f"the feedback sentence is longer than {MAX_EXPLANATION} characters",
                              field=field)
    return text.strip()


def set_gold(conn: sa.Connection, cfg: ProjectConfig, tile_id: int, answer: str | None,
             explanation: str | None, *, actor: str, tutorial: bool | None = None,
             reason: str = "manual") -> None:
    """Mark (``answer`` given) or unmark (``None``) a tile as gold, audited."""
    _get_tile(conn, cfg, tile_id)
    if answer is None:
        values: dict[str, Any] = {"gold_answer": None, "gold_explanation": None, "tutorial": False}
    else:
        values = {"gold_answer": _check_answer(cfg, answer),
                  "gold_explanation": _check_explanation(explanation)}
        if tutorial is not None:
            values["tutorial"] = bool(tutorial)
    conn.execute(sa.update(TILES).where(TILES.c.id == tile_id).values(**values))
    audit(conn, actor, "gold.set" if answer else "gold.unset", f"tile:{tile_id}",
          {"project": cfg.slug, "answer": answer, "reason": reason})


def decide(conn: sa.Connection, cfg: ProjectConfig, tile_id: int, *, answer: Any,
           note: Any = None, source: str = "manual", actor: str, make_gold: bool = False,
           explanation: Any = None) -> dict[str, Any]:
    """Record the expert's answer for a tile (replacing an earlier decision)."""
    tile = _get_tile(conn, cfg, tile_id)
    answer = _check_answer(cfg, answer)
    if note is not None and (not isinstance(note, str) or len(note) > 1000):
        raise ValidationError("'note' must be text of at most 1000 characters", field="note")
    if source not in ("unresolved", "flagged", "sample", "manual"):
        source = "manual"
    if make_gold:
        explanation = _check_explanation(explanation)
    now = utcnow()
    values = dict(project_id=cfg.id, tile_id=tile_id, answer=answer, note=note or None,
                  source=source, crowd_answer=tile.consensus_answer,
                  crowd_confidence=tile.confidence, decided_by=actor[:200], decided_at=now)
    existing = conn.execute(sa.select(DECISIONS.c.id, DECISIONS.c.answer).where(
        DECISIONS.c.tile_id == tile_id)).first()
    if existing is None:
        conn.execute(sa.insert(DECISIONS).values(**values))
    else:
        conn.execute(sa.update(DECISIONS).where(DECISIONS.c.id == existing.id).values(**values))
    audit(conn, actor, "review.decide", f"tile:{tile_id}", {
        "project": cfg.slug, "answer": answer, "previous": existing.answer if existing else None,
        "crowd_answer": tile.consensus_answer, "crowd_confidence": tile.confidence,
        "source": source, "note": note or None,
    })
    if make_gold:
        set_gold(conn, cfg, tile_id, answer, explanation, actor=actor, reason="review")
    row = conn.execute(_with_decisions(cfg).where(TILES.c.id == tile_id)).one()
    item = _tile_json(cfg, row)
    item["decision"] = _row_decision(row)
    return item


def withdraw(conn: sa.Connection, cfg: ProjectConfig, tile_id: int, *, actor: str) -> None:
    _get_tile(conn, cfg, tile_id)
    res = conn.execute(sa.delete(DECISIONS).where(DECISIONS.c.tile_id == tile_id))
    if res.rowcount == 0:
        raise NotFound(f"tile {tile_id} has no expert decision", field="tile_id")
    audit(conn, actor, "review.withdraw", f"tile:{tile_id}", {"project": cfg.slug})


def promote_to_gold(conn: sa.Connection, cfg: ProjectConfig, *, actor: str,
                    tile_ids: list[int] | None = None, min_confidence: float = 0.9,
                    limit: int = 10, explanation: str | None = None) -> list[int]:
    """Turn confident consensus tiles (or the given reviewed tiles) into gold.

    Reviewed tiles take the expert's answer (and come first); others the crowd's answer, and
    only retired tiles whose confidence reaches ``min_confidence``. Confidence here is the one
    that retired the tile (``tiles.confidence``: the agreeing share under fixed redundancy, the
    posterior under the adaptive policy), so "3 of 3 volunteers agreed" promotes at 0.9 even
    on a young project where the analyst map's skill-weighted model is still unsure. The
    feedback sentence defaults to a plain summary of the evidence ("7 of 8 volunteers answered
    Destroyed").
    """
    labels = {a["value"]: a.get("label", a["value"]) for a in cfg.answers}
    q = _with_decisions(cfg).where(TILES.c.gold_answer.is_(None))
    if tile_ids is not None:
        if not isinstance(tile_ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in tile_ids):
            raise ValidationError("'tile_ids' must be a list of tile ids", field="tile_ids")
        q = q.where(TILES.c.id.in_(tile_ids))
    else:
        if not 0.5 <= float(min_confidence) <= 1.0:
            raise ValidationError("'min_confidence' must be from 0.5 to 1", field="min_confidence")
        q = q.where(sa.or_(DECISIONS.c.id.is_not(None), TILES.c.state == "retired"))
    candidates: list[tuple[int, float, int, Any, str]] = []
    for r in conn.execute(q).all():
        if r.d_answer is not None:
            candidates.append((0, 0.0, int(r.id), r, r.d_answer))
            continue
        answer, conf = r.consensus_answer, r.confidence
        if answer is None:
            continue
        if tile_ids is None and (conf is None or conf < float(min_confidence)):
            continue
        candidates.append((1, -float(conf or 0.0), int(r.id), r, answer))
    candidates.sort(key=lambda c: c[:3])
    if tile_ids is None:
        candidates = candidates[:max(1, min(int(limit), 500))]
    promoted = []
    for _, _, tid, r, answer in candidates:
        if answer not in cfg.answer_values:
            continue
        if explanation:
            text = explanation
        elif r.d_answer is not None:
            text = f"An expert reviewed this tile: {labels.get(answer, answer)}."
            if r.d_note:
                text = f"{text} {r.d_note}"
        else:
            counts = dict(r.answer_counts or {})
            total = sum(int(v) for v in counts.values()) or r.label_count
            text = (f"{int(counts.get(answer, 0))} of {total} volunteers answered "
                    f"{labels.get(answer, answer)}.")
        set_gold(conn, cfg, tid, answer, text[:MAX_EXPLANATION], actor=actor,
                 reason="review" if r.d_answer else "consensus")
        promoted.append(tid)
    return promoted


def decisions_for(conn: sa.Connection, project_id: int) -> dict[int, str]:
    """``{tile_id: expert answer}`` for a project (what exports must apply)."""
    rows = conn.execute(sa.select(DECISIONS.c.tile_id, DECISIONS.c.answer).where(
        DECISIONS.c.project_id == project_id)).all()
    return {int(r.tile_id): str(r.answer) for r in rows}


def list_tiles(conn: sa.Connection, cfg: ProjectConfig, *, which: str = "gold",
               after: int = 0, limit: int = 48) -> dict[str, Any]:
    """Tiles for the gold/tutorial page: ``gold`` (gold or tutorial), ``retired`` or ``all``."""
    q = _with_decisions(cfg).where(TILES.c.id > int(after))
    if which == "gold":
        q = q.where(sa.or_(TILES.c.gold_answer.is_not(None), TILES.c.tutorial.is_(True)))
    elif which == "retired":
        q = q.where(TILES.c.state != "live")
    elif which != "all":
        raise ValidationError("'which' must be gold, retired or all", field="which")
    limit = max(1, min(int(limit), 200))
    rows = conn.execute(q.order_by(TILES.c.id).limit(limit + 1)).all()
    items = []
    for r in rows[:limit]:
        item = _tile_json(cfg, r)
        item["decision"] = _row_decision(r)
        items.append(item)
    return {"tiles": items, "next_after": rows[limit - 1].id if len(rows) > limit else None}
