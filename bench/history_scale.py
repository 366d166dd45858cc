"""How the history views hold up after a year of heavy use: 100,000 images, 2,000 conversations.

Fills a database with realistic rows (edit chains, branches, variations, failed turns, prompt
text built from word lists), then times what the UI and CLI do on every page view through the
Repository API: full-text search, one conversation's history, one deep image's lineage tree,
the gallery's first page, and the gallery with filters. Each figure is the median of several
runs after one warm-up; the target is 50 ms each.

Rows go in with SQLAlchemy core in a few large transactions (the FTS triggers still run for
every image row). Files are not written per row: a handful of real PNGs are stored
content-addressed and every row points at one of them, so `check_integrity` stays meaningful.

    python bench/history_scale.py                 # temp dir, removed afterwards
    python bench/history_scale.py /tmp/atelier-bench   # kept; reused on the next run
    python bench/history_scale.py /tmp/atelier-bench --refill --images 20000
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import insert, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.models import Base
from storage.pngmeta import encode_png, format_infotext
from storage.repository import ImageFilter, Repository

TARGET_MS = 50.0


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(sep))


ADJECTIVES = _words(
    "misty golden ancient quiet stormy neon cozy abandoned vibrant moody serene snowy rainy "
    "sunlit shadowy whimsical rustic futuristic gothic tranquil dusty overgrown frozen luminous "
    "crumbling bustling lonely colorful muted pastel dramatic ethereal weathered glowing hidden"
)
SUBJECTS = _words(
    "lighthouse fox castle cat robot dragon owl harbour cottage forest library train market "
    "astronaut samurai garden bridge waterfall mountain village teapot bicycle whale deer "
    "mushroom sailboat windmill greenhouse cathedral tiger hummingbird motorcycle violin "
    "skyscraper tram koi lantern balloon canyon temple diner penguin orchard"
)
SETTINGS = _words(
    "at dusk|in the rain|on a cliff|under the stars|in a snowy valley|by the sea|in a busy street|"
    "in a misty forest|on the moon|in a desert|at sunrise|in an old attic|in a neon city|"
    "beside a frozen lake|inside a greenhouse|on a rooftop|in autumn|underwater|in a wheat field|"
    "at the edge of the world",
    "|",
)
STYLES = _words(
    "watercolor|oil painting|35mm photo|isometric 3d render|studio ghibli style|pencil sketch|"
    "ukiyo-e woodblock|cinematic still|low poly|art nouveau poster|pixel art|charcoal drawing|"
    "tilt-shift photo|gouache illustration|long exposure photograph",
    "|",
)
LIGHTING = _words(
    "soft light|golden hour|volumetric fog|rim lighting|overcast|candlelight|harsh noon sun|"
    "bioluminescent glow|blue hour|dramatic shadows",
    "|",
)
EDITS = (
    "make it {adj}",
    "add a {subject} in the background",
    "change the sky to {lighting}",
    "make it look like a {style}",
    "remove the {subject}",
    "zoom out a bit and make it {adj}",
    "put it {setting}",
)
BACKENDS = (
    ("offline", "builtin-v1", 0.45),
    ("openai", "gpt-image-1", 0.35),
    ("diffusers", "sdxl-base", 0.20),
)


@dataclass
class Fill:
    conversations: int
    images: int
    seed: int = 20261123


def _prompt(rng: random.Random) -> str:
    return (
        f"a {rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)} {rng.choice(SETTINGS)}, "
        f"{rng.choice(STYLES)}, {rng.choice(LIGHTING)}"
    )


def _instruction(rng: random.Random) -> str:
    return rng.choice(EDITS).format(
        adj=rng.choice(ADJECTIVES),
        subject=rng.choice(SUBJECTS),
        lighting=rng.choice(LIGHTING),
        style=rng.choice(STYLES),
        setting=rng.choice(SETTINGS),
    )


def _backend(rng: random.Random) -> tuple[str, str]:
    roll, total = rng.random(), 0.0
    for backend, model, share in BACKENDS:
        total += share
        if roll < total:
            return backend, model
    return BACKENDS[0][0], BACKENDS[0][1]


def _shared_files(repo: Repository, rng: random.Random) -> tuple[list[str], str]:
    """A handful of real PNGs (and one mask) every row points at; stored content-addressed."""
    hashes = []
    for index in range(8):
        image = PILImage.new("RGB", (64, 64), (index * 30, 255 - index * 30, (index * 77) % 256))
        infotext = format_infotext(_prompt(rng), "", {"Steps": 25, "Seed": index, "Size": "64x64"})
        hashes.append(repo.files.put(encode_png(image, infotext, {"bench": index})))
    mask = repo.files.put(encode_png(PILImage.new("L", (64, 64), 255), None, None))
    return hashes, mask


def fill(repo: Repository, spec: Fill) -> dict[str, Any]:
    """Insert every row; returns facts the timings need (a deep image, a big conversation)."""
    rng = random.Random(spec.seed)
    file_hashes, mask_hash = _shared_files(repo, rng)
    tables = Base.metadata.tables
    start = datetime(2025, 11, 1)
    step = timedelta(days=365) / spec.images

    # Spread images over conversations unevenly: many short sessions, a few long ones
    # (log-normal, capped at 600 images, about what one person makes in one long session).
    weights = [min(rng.lognormvariate(3.4, 0.9), 600.0) for _ in range(spec.conversations)]
    scale = spec.images / sum(weights)
    sizes = [max(1, int(w * scale)) for w in weights]
    while sum(sizes) > spec.images:
        sizes[sizes.index(max(sizes))] -= 1
    while sum(sizes) < spec.images:
        sizes[rng.randrange(len(sizes))] += 1

    conversations: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    generations: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    depth: dict[int, int] = {}
    message_id = generation_id = image_id = 0
    clock = 0
    # Interleave conversations in time, as a real user switches between them.
    order = [cid for cid, size in enumerate(sizes, start=1) for _ in range(size)]
    rng.shuffle(order)
    per_conversation: dict[int, list[int]] = {cid: [] for cid in range(1, spec.conversations + 1)}
    first_seen: dict[int, datetime] = {}
    last_seen: dict[int, datetime] = {}
    for cid in order:  # grows while iterating: a failed turn is retried later
        clock += 1
        when = start + step * clock
        first_seen.setdefault(cid, when)
        last_seen[cid] = when
        own = per_conversation[cid]
        roll = rng.random()
        if not own or roll < 0.30:
            operation, parent = ("upload" if rng.random() < 0.03 else "generate"), None
        elif roll < 0.70:
            operation, parent = "edit", own[-1]  # keep editing the latest: chains
        elif roll < 0.85:
            operation, parent = "variation", rng.choice(own)  # branch off anything earlier
        elif roll < 0.93:
            operation, parent = "inpaint", rng.choice(own[-5:])
        else:
            operation, parent = "edit", rng.choice(own)
        backend, model = ("upload", "") if operation == "upload" else _backend(rng)
        prompt = _prompt(rng)
        instruction = _instruction(rng) if parent is not None else prompt
        message_id += 1
        messages.append(
            {"id": message_id, "conversation_id": cid, "role": "user", "content": instruction,
             "plan": None, "status": "ok", "created_at": when}
        )  # fmt: skip
        if rng.random() < 0.02:  # a failed backend call: recorded, takes no number (nor a slot)
            order.append(cid)
            message_id += 1
            generation_id += 1
            messages.append(
                {"id": message_id, "conversation_id": cid, "role": "assistant",
                 "content": "The image service timed out; nothing was charged.", "status": "failed",
                 "plan": {"intent": operation, "errors": ["timeout"]}, "created_at": when}
            )  # fmt: skip
            generations.append(
                {"id": generation_id, "conversation_id": cid, "message_id": message_id,
                 "operation": operation, "backend": backend, "model": model, "prompt": prompt,
                 "negative_prompt": "", "params": {}, "status": "failed", "error": "timeout",
                 "duration_ms": 120_000, "usage": None, "cost_usd": None, "created_at": when}
            )  # fmt: skip
            continue
        message_id += 1
        messages.append(
            {"id": message_id, "conversation_id": cid, "role": "assistant",
             "content": f"Here is {prompt}.", "status": "ok", "created_at": when,
             "plan": {"intent": operation, "targets": [parent] if parent else [], "prompt": prompt}}
        )  # fmt: skip
        params = {"steps": 25, "guidance": 7.0, "sampler": "Euler a"} if backend == "diffusers" else {}
        gen_id: int | None = None
        if operation != "upload":
            generation_id += 1
            gen_id = generation_id
            generations.append(
                {"id": gen_id, "conversation_id": cid, "message_id": message_id, "operation": operation,
                 "backend": backend, "model": model, "prompt": prompt, "negative_prompt": "blurry",
                 "params": params, "status": "ok", "error": None, "duration_ms": rng.randint(300, 9000),
                 "usage": {"output_tokens": 4096} if backend == "openai" else None,
                 "cost_usd": 0.04 if backend == "openai" else None, "created_at": when}
            )  # fmt: skip
            if parent is not None:
                inputs.append({"generation_id": gen_id, "image_id": parent, "role": "init"})
                if operation == "inpaint":
                    inputs.append({"generation_id": gen_id, "image_id": parent, "role": "mask"})
        image_id += 1
        depth[image_id] = 0 if parent is None else depth[parent] + 1
        own.append(image_id)
        images.append(
            {"id": image_id, "conversation_id": cid, "message_id": message_id, "generation_id": gen_id,
             "parent_id": parent, "number": len(own), "operation": operation,
             "instruction": instruction if parent is not None or operation == "upload" else None,
             "prompt": prompt, "negative_prompt": "blurry",
             "revised_prompt": f"A detailed image of {prompt}" if backend == "openai" else None,
             "backend": backend, "model": model, "seed": rng.randrange(2**31), "width": 64, "height": 64,
             "params": params, "sha256": rng.choice(file_hashes),
             "mask_sha256": mask_hash if operation == "inpaint" else None, "created_at": when}
        )  # fmt: skip
    for cid in range(1, spec.conversations + 1):
        conversations.append(
            {"id": cid, "title": f"Session {cid}: {rng.choice(SUBJECTS)}s",
             "created_at": first_seen.get(cid, start), "updated_at": last_seen.get(cid, start)}
        )  # fmt: skip

    with repo.db.engine.begin() as connection:
        for name, rows in (
            ("conversations", conversations),
            ("messages", messages),
            ("generations", generations),
        ):
            for chunk in _chunks(rows, 20_000):
                connection.execute(insert(tables[name]), chunk)
    # Images in a few transactions of their own (parents always precede children).
    for chunk in _chunks(images, 25_000):
        with repo.db.engine.begin() as connection:
            connection.execute(insert(tables["images"]), chunk)
    with repo.db.engine.begin() as connection:
        connection.execute(insert(tables["generation_inputs"]), inputs)
    with repo.db.engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        connection.commit()

    deepest = max(depth, key=lambda i: depth[i])
    by_size = sorted(per_conversation, key=lambda c: (len(per_conversation[c]), c))
    return {
        "deep_image": deepest,
        "deep_depth": depth[deepest],
        "big_conversation": by_size[-1],
        "big_conversation_images": len(per_conversation[by_size[-1]]),
        "typical_conversation": by_size[len(by_size) // 2],
        "typical_conversation_images": len(per_conversation[by_size[len(by_size) // 2]]),
    }


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for index in range(0, len(rows), size):
        yield rows[index : index + size]


def _facts_from_db(repo: Repository) -> dict[str, Any]:
    """When reusing a filled database: find the deep image and the big conversation again."""
    with repo.db.engine.connect() as connection:
        deep = connection.execute(
            text(
                """
                WITH RECURSIVE d(id, depth) AS (
                    SELECT id, 0 FROM images WHERE parent_id IS NULL
                    UNION ALL SELECT images.id, d.depth + 1 FROM images JOIN d ON images.parent_id = d.id
                ) SELECT id, depth FROM d ORDER BY depth DESC LIMIT 1
                """
            )
        ).one()
        sizes = connection.execute(
            text("SELECT conversation_id, count(*) FROM images GROUP BY 1 ORDER BY 2, 1")
        ).all()
    return {
        "deep_image": deep[0],
        "deep_depth": deep[1],
        "big_conversation": sizes[-1][0],
        "big_conversation_images": sizes[-1][1],
        "typical_conversation": sizes[len(sizes) // 2][0],
        "typical_conversation_images": sizes[len(sizes) // 2][1],
    }


def _time(call: Callable[[], Any], runs: int) -> tuple[float, float, Any]:
    result = call()  # warm-up (and the value, for a sanity line)
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples), max(samples), result


def run(data_dir: Path, spec: Fill, runs: int, refill: bool) -> int:
    db_path = data_dir / "atelier.db"
    if refill and data_dir.exists():
        shutil.rmtree(data_dir)
    repo = Repository.open(f"sqlite:///{db_path}", data_dir / "images")
    existing = repo.counts()["images"]
    if existing:
        print(f"Reusing {db_path} ({existing:,} images); --refill to rebuild.")
        facts = _facts_from_db(repo)
    else:
        began = time.perf_counter()
        facts = fill(repo, spec)
        print(f"Filled {db_path} in {time.perf_counter() - began:.1f} s")
    counts = repo.counts()
    print(
        f"{counts['images']:,} images · {counts['conversations']:,} conversations · "
        f"{counts['messages']:,} messages · {counts['generations']:,} generations · "
        f"deepest chain {facts['deep_depth']} (image {facts['deep_image']}) · conversations: typical "
        f"{facts['typical_conversation_images']} images, biggest {facts['big_conversation_images']}"
    )

    def history(conversation_id: int) -> Callable[[], Any]:
        return lambda: (repo.messages(conversation_id), repo.conversation_images(conversation_id))

    since = datetime(2026, 10, 1)
    deep = facts["deep_image"]
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("search: 'misty lighthouse'", lambda: repo.search_images("misty lighthouse")),
        ("search: 'cat' (common word)", lambda: repo.search_images("cat")),
        ("search: 'zzzz' (no match)", lambda: repo.search_images("zzzz")),
        ("history: typical conversation", history(facts["typical_conversation"])),
        ("history: biggest conversation", history(facts["big_conversation"])),
        (f"lineage tree: deep image (depth {facts['deep_depth']})", lambda: repo.lineage_tree(deep)),
        ("ancestors: deep image", lambda: repo.ancestors(deep)),
        ("gallery: first page (50)", lambda: repo.list_images(limit=50)),
        ("gallery: page 20 (offset 950)", lambda: repo.list_images(limit=50, offset=950)),
        ("gallery: backend=diffusers", lambda: repo.list_images(ImageFilter(backend="diffusers"))),
        ("gallery: operation=upload (rare)", lambda: repo.list_images(ImageFilter(operation="upload"))),
        (
            "gallery: diffusers + inpaint + since Oct",
            lambda: repo.list_images(ImageFilter(backend="diffusers", operation="inpaint", since=since)),
        ),
        ("gallery: backend=none-such (no match)", lambda: repo.list_images(ImageFilter(backend="none"))),
        (
            "gallery: one conversation + search",
            lambda: repo.list_images(ImageFilter(conversation_id=facts["big_conversation"], query="fox")),
        ),
        ("gallery: filter choices", repo.backends_and_operations),
    ]  # fmt: skip
    width = max(len(name) for name, _ in cases)
    print(f"\n{'query':<{width}}  {'median ms':>9}  {'max ms':>7}  {'rows':>5}  target")
    misses = 0
    for name, call in cases:
        median, worst, result = _time(call, runs)
        rows = len(result[1]) + len(result[0]) if isinstance(result, tuple) else len(result)
        ok = median <= TARGET_MS
        misses += not ok
        print(f"{name:<{width}}  {median:>9.2f}  {worst:>7.2f}  {rows:>5}  {'ok' if ok else 'MISS'} (≤ 50)")

    # Deleting a conversation (a write: FK cascades must find their rows by index). Each run
    # deletes a different median-sized conversation, so a reused database shrinks a little.
    with repo.db.engine.connect() as connection:
        victims = [
            row[0]
            for row in connection.execute(
                text(
                    "SELECT conversation_id FROM images GROUP BY 1 "
                    "HAVING count(*) BETWEEN :low AND :high ORDER BY 1 LIMIT :n"
                ),
                {"low": 20, "high": 60, "n": runs},
            )
        ]
    samples = []
    for victim in victims:
        began = time.perf_counter()
        repo.delete_conversation(victim)
        samples.append((time.perf_counter() - began) * 1000)
    if samples:
        median = statistics.median(samples)
        ok = median <= TARGET_MS
        misses += not ok
        name = "delete: conversation of 20-60 images"
        print(
            f"{name:<{width}}  {median:>9.2f}  {max(samples):>7.2f}  {len(samples):>5}  "
            f"{'ok' if ok else 'MISS'} (≤ 50)"
        )
    repo.db.dispose()
    return 1 if misses else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", nargs="?", type=Path, help="kept and reused; default: a temp dir")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per query (after one warm-up)")
    parser.add_argument("--refill", action="store_true", help="delete and rebuild the data dir")
    args = parser.parse_args()
    spec = Fill(conversations=args.conversations, images=args.images)
    if args.data_dir is not None:
        return run(args.data_dir, spec, args.runs, args.refill)
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as temp:
        return run(Path(temp), spec, args.runs, refill=False)


if __name__ == "__main__":
    raise SystemExit(main())
