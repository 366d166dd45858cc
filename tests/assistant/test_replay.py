"""Replay from the record: one image, a whole chain from its root, and "try again" on a batch.

Everything is checked where a user would look: the stored files (sha256), the lineage rows,
the generation rows with their inputs, and the CLI's exit code and JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from assistant.core import Assistant
from assistant.events import ImageReady, Reply
from assistant.settings import BackendChoice, Settings
from storage.models import Image
from tests.assistant.test_assistant_turns import images_of, open_assistant, run
from tools.base import InvalidRequest


def chain_conversation(assistant: Assistant) -> tuple[int, list[Image]]:
    """#1 generate → #2 edit (keeps #1's seed) → #3 variation (own seed) → #4 black and white → #5 edit."""
    conversation_id = run(assistant, None, "a small house by a lake")[0].conversation_id
    for words in ("make it snowier", "a variation of #2", "make #3 black and white", "add a moon to #4"):
        assert images_of(run(assistant, conversation_id, words)), words
    images = assistant.repo.conversation_images(conversation_id)
    assert [i.operation for i in images] == ["generate", "edit", "variation", "transform", "edit"]
    assert [i.parent_id for i in images[1:]] == [i.id for i in images[:-1]]
    return conversation_id, images


def test_replaying_a_chain_unchanged_gives_the_same_files_as_a_new_branch(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, old = chain_conversation(assistant)
    repo = assistant.repo
    messages_before = len(repo.messages(conversation_id))

    created = assistant.replay_chain(old[-1].id)

    assert [i.number for i in created] == [6, 7, 8, 9, 10]
    assert [i.sha256 for i in created] != [i.sha256 for i in old]  # the PNG metadata names new ids
    for new, original in zip(created, old, strict=True):
        assert new.seed == original.seed
        assert repo.load_image(new).tobytes() == repo.load_image(original).tobytes()
        assert (new.params or {})["replay_of"] == original.id
    assert created[0].parent_id is None
    assert [i.parent_id for i in created[1:]] == [i.id for i in created[:-1]]
    # the old branch is untouched, and the replay is one turn on record
    assert [(i.id, i.parent_id, i.sha256) for i in repo.conversation_images(conversation_id)[:5]] == [
        (i.id, i.parent_id, i.sha256) for i in old
    ]
    messages = repo.messages(conversation_id)
    assert len(messages) == messages_before + 1
    assert "#1 → #2 → #3 → #4 → #5" in messages[-1].content
    # and it says so: the point of a replay is to know whether the record reproduces
    assert "Every step came out identical to the original, pixel for pixel." in messages[-1].content
    assert all((i.params or {})["replay_identical"] is True for i in created)
    lineage = run(assistant, conversation_id, "how did #10 come about?")
    answer = next(e.text for e in lineage if isinstance(e, Reply))
    assert "#6 was generated from" in answer and "(a replay of #1)" in answer and "(a replay of #5)" in answer


def test_replaying_a_chain_with_a_new_seed_follows_each_steps_seed_rule(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    _conversation_id, old = chain_conversation(assistant)
    repo = assistant.repo
    assert old[1].seed == old[0].seed and old[2].seed != old[1].seed  # the rule the replay follows

    created = assistant.replay_chain(old[-1].id, seed=1234)

    # the root takes the seed; the edit keeps its new parent's; the variation draws seed + its
    # place in the chain; the transform has none; the edit of the transform drew its own
    assert [i.seed for i in created] == [1234, 1234, 1236, None, 1238]
    assert repo.image_bytes(created[0]) != repo.image_bytes(old[0])
    for new in created:
        if new.operation == "transform":
            assert new.generation_id is None
            continue
        generation, inputs = repo.generation(new.generation_id or -1)
        assert generation.params["seed"] == new.seed and generation.params["replay_of"] in {i.id for i in old}
        parent = [i for i in created if i.id == new.parent_id]
        # each step ran on the NEW branch's pixels: its init input is the new parent
        assert [(row.image_id, row.role) for row in inputs] == [(p.id, "init") for p in parent]

    # the new branch replays itself exactly, by file hash
    for new in created:
        _original, _pixels, identical = assistant.replay(new.id)
        assert identical, new.number


def test_a_chain_that_breaks_the_turn_pixel_cap_stores_nothing(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, old = chain_conversation(assistant)
    files_before = sorted((tmp_path / "images").rglob("*.png"))
    # 128² images: the cap lets two backend steps through and refuses the third
    capped = open_assistant(tmp_path, max_pixels_per_turn=128 * 128 * 2)

    with pytest.raises(InvalidRequest) as raised:
        capped.replay_chain(old[-1].id, seed=7)

    assert raised.value.user_message.startswith("Replaying #3 of the chain: 1 × 128×128")
    assert "more pixels than one turn may make" in raised.value.user_message
    assert "on top of the 32,768 this turn has already made" in raised.value.user_message
    assert [i.id for i in capped.repo.conversation_images(conversation_id)] == [i.id for i in old]
    assert sorted((tmp_path / "images").rglob("*.png")) == files_before


def test_replay_reports_a_difference_when_the_record_no_longer_matches_the_file(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id = run(assistant, None, "a purple city at dusk")[0].conversation_id
    image = assistant.repo.get_image_by_number(conversation_id, 1)
    assert assistant.replay(image.id)[2]
    with assistant.repo.db.write() as session:
        session.execute(text("UPDATE images SET seed = seed + 1 WHERE id = :id"), {"id": image.id})

    _original, _pixels, identical = assistant.replay(image.id)

    assert not identical


def test_try_again_after_a_batch_rerolls_every_image_of_it(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id = run(assistant, None, "a red fox in the snow")[0].conversation_id
    batch = images_of(run(assistant, conversation_id, "three variations of #1"))
    assert [e.number for e in batch] == [2, 3, 4]

    events = run(assistant, conversation_id, "try again")

    made = images_of(events)
    assert [e.number for e in made] == [5, 6, 7]
    repo = assistant.repo
    rows = {i.number: i for i in repo.conversation_images(conversation_id)}
    for old_number, new_number in zip((2, 3, 4), (5, 6, 7), strict=True):
        new = rows[new_number]
        assert new.parent_id == rows[1].id and new.operation == "variation"  # siblings, not children
        assert (new.params or {})["regenerated_from"] == rows[old_number].id
        assert new.seed != rows[old_number].seed


def test_a_rerolled_first_image_says_where_it_came_from(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id = run(assistant, None, "a lighthouse on a cliff")[0].conversation_id
    (again,) = images_of(run(assistant, conversation_id, "regenerate #1"))
    assert again.parent_id is None

    reply = run(assistant, conversation_id, "how did #2 come about?")[-1]

    assert isinstance(reply, Reply)
    assert "a re-roll of #1 with a new seed" in reply.text


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ATELIER_DATA_DIR": str(data_dir), "ATELIER_BACKEND": "offline"}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "assistant.cli", "replay", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_atelier_replay_from_the_command_line(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, backend="offline", steps=4)  # the CLI's defaults, small steps
    from assistant.runtime import open_repository

    assistant = Assistant(settings, open_repository(settings))
    conversation_id = run(assistant, None, "a windmill in a field")[0].conversation_id
    run(assistant, conversation_id, "make it rainy")
    tip = assistant.repo.get_image_by_number(conversation_id, 2)

    plain = _cli(tmp_path, str(tip.id), "--json")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout) == {
        "image_id": tip.id,
        "identical": True,
        "backend": "offline",
        "sha256": tip.sha256,
        "file_was_missing": False,
        "file_was_damaged": False,
        "restored": False,
    }

    branch = _cli(tmp_path, str(tip.id), "--from-root", "--seed", "99", "--json")
    assert branch.returncode == 0, branch.stderr
    new_images = json.loads(branch.stdout)["new_images"]
    assert [(i["number"], i["operation"], i["seed"]) for i in new_images] == [
        (3, "generate", 99),
        (4, "edit", 99),
    ]
    assert new_images[0]["parent_id"] is None and new_images[1]["parent_id"] == new_images[0]["id"]
    assert all(Path(i["path"]).is_file() for i in new_images)
    assert [i["replay_of"] for i in new_images] == [tip.parent_id, tip.id]

    same = _cli(tmp_path, str(tip.id), "--from-root")
    assert same.returncode == 0, same.stderr
    assert "(identical to #1)" in same.stdout and "(identical to #2)" in same.stdout
    assert "Every step came out identical to the original, pixel for pixel." in same.stdout

    for args, words in (
        (("--seed", "5"), "need --from-root"),
        (("--from-root", "--backend", "dalle"), "Unknown backend 'dalle'"),
        (("--from-root", "--model", "x"), "The offline backend has a single model"),
    ):
        refused = _cli(tmp_path, str(tip.id), *args)
        assert refused.returncode != 0 and words in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr
    assert len(assistant.repo.conversation_images(conversation_id)) == 6  # refusals stored nothing

    missing = _cli(tmp_path, "999", "--from-root")
    assert missing.returncode != 0 and "999" in missing.stderr and "Traceback" not in missing.stderr


def test_events_of_a_replayed_chain_are_not_mixed_into_the_chat(tmp_path: Path) -> None:
    """A replay is its own turn: the next chat turn's "it" is the replay's last image."""
    assistant = open_assistant(tmp_path)
    conversation_id = run(assistant, None, "a green forest at noon")[0].conversation_id
    created = assistant.replay_chain(assistant.repo.get_image_by_number(conversation_id, 1).id, seed=3)
    events = run(assistant, conversation_id, "make it darker")
    (edited,) = [e for e in events if isinstance(e, ImageReady)]
    assert edited.parent_id == created[-1].id


def test_them_means_the_images_of_the_last_turn_only(tmp_path: Path) -> None:
    """Two turns with the same words make look-alike rows; "them" is the last turn's pair."""
    assistant = open_assistant(tmp_path)
    conversation_id = run(assistant, None, "two images of a red fox")[0].conversation_id
    assert len(images_of(run(assistant, conversation_id, "two images of a red fox"))) == 2
    rows = assistant.repo.conversation_images(conversation_id)
    assert len({(r.operation, r.parent_id, r.prompt) for r in rows}) == 1  # they look alike

    events = run(assistant, conversation_id, "make them black and white")

    assert events[0].targets == [3, 4]  # type: ignore[attr-defined]
    sources = {i.parent_id for i in assistant.repo.conversation_images(conversation_id)[4:]}
    assert sources == {rows[2].id, rows[3].id}


def test_a_chain_made_offline_replays_on_openai_with_the_new_branchs_pixels(tmp_path: Path) -> None:
    """--backend openai: the root is generated there, and the edit sends THAT root, not the old one."""
    from pydantic import SecretStr

    from assistant.runtime import open_repository
    from tests.fake_openai import EDITS, GENERATIONS, FakeOpenAI

    assistant = open_assistant(tmp_path)
    conversation_id = run(assistant, None, "a small house by a lake")[0].conversation_id
    run(assistant, conversation_id, "make it snowier")
    tip = assistant.repo.get_image_by_number(conversation_id, 2)
    with FakeOpenAI() as server:
        settings = assistant.settings.model_copy(
            update={
                "backend": BackendChoice.OPENAI,
                "openai_base_url": server.base_url,
                "openai_api_key": SecretStr("sk-test-replay-0000"),
                "openai_max_retries": 0,
                "width": 1024,
                "height": 1024,
            }
        )
        on_openai = Assistant(settings, open_repository(settings))

        created = on_openai.replay_chain(tip.id)

        (generate,) = server.requests_to(GENERATIONS)
        (edit,) = server.requests_to(EDITS)
    assert [(i.operation, i.backend) for i in created] == [("generate", "openai"), ("edit", "openai")]
    assert generate.json["prompt"] == assistant.repo.get_image_by_number(conversation_id, 1).prompt
    assert edit.field("prompt") == tip.prompt
    (sent,) = edit.files_named("image") or edit.files_named("image[]")
    from io import BytesIO

    from PIL import Image as PILImage

    sent_pixels = PILImage.open(BytesIO(sent.data)).convert("RGB")
    new_root = on_openai.repo.load_image(created[0]).convert("RGB")
    assert sent_pixels.size == new_root.size and sent_pixels.tobytes() == new_root.tobytes()
    assert created[1].parent_id == created[0].id
    # the new images' records describe the OpenAI run, not the offline renderer's
    for image in created:
        assert "renderer" not in (image.params or {}) and "scene" not in (image.params or {}), image.params
