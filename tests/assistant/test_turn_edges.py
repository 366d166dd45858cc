"""Turns at the edges a user runs into: damaged files, retrying a failed turn, limits on
model-free results, seeds out of range, and the words of an interrupted turn.

Everything runs through `Assistant.respond` on the offline backend with a real SQLite file,
and checks what a user sees (the events) and what is stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.core import Assistant
from assistant.events import Event, Failed, Reply
from tests.assistant.test_assistant_turns import images_of, open_assistant, png, run


def numbers(assistant: Assistant, conversation_id: int) -> list[int]:
    return [image.number for image in assistant.repo.conversation_images(conversation_id)]


def failure(events: list[Event]) -> str:
    failed = [e for e in events if isinstance(e, Failed)]
    assert failed, events
    return failed[-1].message


def start(tmp_path: Path, text: str = "a cozy cabin at night", **overrides: object) -> tuple[Assistant, int]:
    assistant = open_assistant(tmp_path, **overrides)
    events = run(assistant, None, text)
    assert images_of(events), events
    return assistant, events[0].conversation_id


@pytest.mark.parametrize("damage", ["delete", "truncate"])
@pytest.mark.parametrize("text", ["three variations of #1", "make #1 snowier", "flip #1"])
def test_a_damaged_file_is_named_in_the_chat_and_nothing_is_stored(
    tmp_path: Path, damage: str, text: str
) -> None:
    assistant, conversation_id = start(tmp_path)
    (image,) = assistant.repo.conversation_images(conversation_id)
    path = assistant.repo.image_path(image)
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:200])
    events = run(assistant, conversation_id, text)
    message = failure(events)
    word = "missing" if damage == "delete" else "damaged"
    assert message.startswith(f"The file of image #1 is {word}") and "atelier doctor" in message, message
    assert "Errno" not in message and str(tmp_path) not in message
    assert numbers(assistant, conversation_id) == [1]
    replies = [m for m in assistant.repo.messages(conversation_id) if m.role == "assistant"]
    assert replies[-1].content.startswith(f"The file of image #1 is {word}")  # the turn is answered


def test_a_seed_out_of_range_is_refused_not_wrapped_and_minus_one_means_random(tmp_path: Path) -> None:
    assistant, conversation_id = start(tmp_path, "a red fox in the snow, seed 42")
    assert [i.seed for i in assistant.repo.conversation_images(conversation_id)] == [42]
    events = run(assistant, conversation_id, "a cabin at night, seed 5000000000")
    assert (
        failure(events) == "Seeds are whole numbers from 0 to 4294967295 (got 5000000000); -1 means random."
    )
    assert numbers(assistant, conversation_id) == [1]
    seeds = set()
    for _ in range(2):
        images = images_of(run(assistant, conversation_id, "a cabin at night, seed -1"))
        seeds.add(assistant.repo.get_image(images[0].id).seed)
    assert len(seeds) == 2 and all(0 <= s < 2**32 for s in seeds)  # random each time
    from tools.base import InvalidRequest

    with pytest.raises(InvalidRequest, match="Seeds are whole numbers from 0 to 4294967295"):
        assistant.replay_chain(1, seed=-5)


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("upscale #1 4x", "upscale of #1 would be 512×512"),
        ("resize #1 to 1000x300", "resize of #1 would be 1000×300"),
    ],
)
def test_model_free_results_keep_to_the_side_limit(tmp_path: Path, text: str, result: str) -> None:
    assistant, conversation_id = start(tmp_path, max_side=256)  # images are 128² here
    message = failure(run(assistant, conversation_id, text))
    fits = " 2× (256×256) fits: say “upscale #1 2x”." if text.startswith("upscale") else ""
    assert message == f"That {result}; the limit is 256 px per side (ATELIER_MAX_SIDE).{fits}", message
    assert numbers(assistant, conversation_id) == [1]
    images = images_of(run(assistant, conversation_id, "upscale #1 2x"))  # within the limit: fine
    assert (assistant.repo.get_image(images[0].id).width, len(images)) == (256, 1)


def test_an_upscale_no_factor_fits_offers_none(tmp_path: Path) -> None:
    assistant, conversation_id = start(tmp_path, max_side=200)  # 128² doubled is already too big
    message = failure(run(assistant, conversation_id, "upscale #1 4x"))
    assert message == "That upscale of #1 would be 512×512; the limit is 200 px per side (ATELIER_MAX_SIDE)."
    assert numbers(assistant, conversation_id) == [1]


def test_try_again_after_a_failed_turn_retries_that_request(tmp_path: Path) -> None:
    assistant, conversation_id = start(tmp_path, max_side=256)
    failure(run(assistant, conversation_id, "upscale #1 4x"))  # over the side limit: fails
    assistant.settings.max_side = 1024  # the user raises the limit, then asks again
    events = run(assistant, conversation_id, "try again")
    (image,) = images_of(events)
    assert (image.operation, assistant.repo.get_image(image.id).width) == ("upscale", 512)
    reply = next(e for e in events if isinstance(e, Reply))
    assert "Retrying your earlier request: “upscale #1 4x”." in reply.text
    # after a turn that worked, "try again" re-rolls as before
    events = run(assistant, conversation_id, "make #1 snowier")
    events = run(assistant, conversation_id, "try again")
    assert [e.operation for e in images_of(events)] == ["edit"] and not any(
        "Retrying" in e.text for e in events if isinstance(e, Reply)
    )


def test_try_again_after_a_stopped_turn_and_after_a_retry_that_failed(tmp_path: Path) -> None:
    assistant, conversation_id = start(tmp_path, max_side=256)
    stream = assistant.respond(conversation_id, "make it foggy")
    next(stream)  # the plan is out; then the page reloads before the image is made
    stream.close()
    assert assistant.repo.messages(conversation_id)[-1].status == "cancelled"
    events = run(assistant, conversation_id, "please try again")
    (image,) = images_of(events)
    assert image.operation == "edit" and "fog" in assistant.repo.get_image(image.id).prompt
    failure(run(assistant, conversation_id, "upscale #2 4x"))
    failure(run(assistant, conversation_id, "try again"))  # still over the limit
    assistant.settings.max_side = 1024
    (image,) = images_of(run(assistant, conversation_id, "retry"))
    assert image.operation == "upscale" and assistant.repo.get_image(image.id).parent_id is not None


def test_a_replayed_branch_keeps_no_ids_of_the_old_branch_but_replay_of(tmp_path: Path) -> None:
    assistant, conversation_id = start(tmp_path)
    run(assistant, conversation_id, "make it snowier")
    run(assistant, conversation_id, "flip it horizontally")
    old = assistant.repo.conversation_images(conversation_id)
    new = assistant.replay_chain(old[-1].id, seed=7)
    assert [i.parent_id for i in new] == [None, new[0].id, new[1].id]
    for step, replayed in zip(old, new, strict=True):
        params = replayed.params or {}
        assert params["replay_of"] == step.id
        assert "source_id" not in params and "regenerated_from" not in params


def test_steps_over_what_the_backend_takes_are_refused_with_that_limit(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    assistant.settings.steps = 120  # ATELIER_MAX_STEPS is 150, the renderer's 100
    events = run(assistant, None, "a lighthouse at dawn")
    assert failure(events) == "120 steps is out of range; use 1 to 100 (the most the offline renderer takes)."
    assert assistant.repo.conversation_images(events[0].conversation_id) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps 0", "0 steps is out of range; use 1 to 100 (the most the offline renderer takes)."),
        ("a dog, 0 steps", "0 steps is out of range; use 1 to 100 (the most the offline renderer takes)."),
        ("cfg 100", "CFG scale 100 is out of range; use 0 to 50 (5 to 9 is usual)."),
        ("cfg -3", "CFG scale -3 is out of range; use 0 to 50 (5 to 9 is usual)."),
        ("a dog, seed -12", "Seeds are whole numbers from 0 to 4294967295 (got -12); -1 means random."),
        (
            "make it snowier, strength 2",
            "Strength 2 is out of range; use 0 to 1 (0.3 keeps most of the picture, 0.8 changes most of it).",
        ),
    ],
)
def test_settings_out_of_range_are_refused_with_the_range(tmp_path: Path, text: str, message: str) -> None:
    """Zero steps, CFG 100 and seed -12 fail the turn with the range, as 500 steps and 4096 px
    do, rather than being asked about or drawn as a picture of the words (the CLI exits 1)."""
    assistant, conversation_id = start(tmp_path)
    assert failure(run(assistant, conversation_id, text)) == message
    assert [image.number for image in assistant.repo.conversation_images(conversation_id)] == [1]


def test_a_default_side_under_64_px_is_refused_before_the_backend_is_called(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    assistant.settings.width, assistant.settings.height = 32, 256  # past the settings checks
    events = run(assistant, None, "a lighthouse at dawn")
    assert failure(events) == "32×256 is too small; each side needs at least 64 px."
    assert assistant.repo.generations(events[0].conversation_id) == []


def test_a_data_folder_that_cannot_be_made_is_one_line_for_the_ui_too(tmp_path: Path) -> None:
    from assistant.runtime import open_repository
    from assistant.settings import Settings
    from storage.db import StorageError

    (tmp_path / "a-file").write_text("not a folder")
    target = tmp_path / "a-file" / "data"
    with pytest.raises(StorageError) as refused:
        open_repository(Settings(data_dir=target))
    assert str(refused.value) == (
        f"Cannot create the data folder {target}: Not a directory; point ATELIER_DATA_DIR somewhere writable."
    )


A1111_BLOCK = (
    "a cozy cabin at night, snow, warm windows\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 30, Sampler: Euler a, CFG scale: 5, Seed: 42, Size: 192x128, Model: sd15"
)


def test_a_pasted_a1111_block_runs_as_written_with_its_parameters(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    events = run(assistant, None, A1111_BLOCK)
    (ready,) = images_of(events)
    image = assistant.repo.get_image(ready.id)
    assert image.prompt == "a cozy cabin at night, snow, warm windows"  # verbatim, not rewritten
    assert image.negative_prompt == ""  # the offline renderer has none, and says so
    assert (image.seed, image.width, image.height) == (42, 192, 128)
    generation, _ = assistant.repo.generation(image.generation_id or -1)
    assert (image.params or {})["steps"] == 30 and generation.params["guidance"] == 5.0
    reply = next(e for e in events if isinstance(e, Reply)).text
    assert "Not applied from the pasted parameters: Model (sd15)" in reply
    # the sampler is applied where a backend has samplers (diffusers); this one says it has none
    assert "The offline backend has no sampler to choose; “Euler a” was not used." in reply
    assert "The offline backend takes no negative prompt; “blurry, lowres” was left out." in reply
    # the same block again gives the same pixels: a pasted seed is a real seed
    again = assistant.repo.get_image(images_of(run(assistant, events[0].conversation_id, A1111_BLOCK))[0].id)
    assert assistant.repo.load_image(again).tobytes() == assistant.repo.load_image(image).tobytes()


def test_a_pasted_block_with_a_bad_value_says_which_and_uses_the_default(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    events = run(assistant, None, "a red fox\nSteps: many, Seed: 7, Size: big")
    (ready,) = images_of(events)
    image = assistant.repo.get_image(ready.id)
    assert (image.seed, image.width, (image.params or {})["steps"]) == (7, 128, 4)
    reply = next(e for e in events if isinstance(e, Reply)).text
    assert "Steps 'many' is not a whole number" in reply and "Size 'big' is not WIDTHxHEIGHT" in reply


def test_plain_messages_with_colons_are_not_taken_for_a_block(tmp_path: Path) -> None:
    from assistant.pasted_parameters import plan_from_pasted_parameters

    for text in ("a cat: sitting on a mat", "make #1 snowier\nplease", "note: seed matters"):
        assert plan_from_pasted_parameters(text) is None, text


def _png_with_parameters(text: str) -> bytes:
    import io

    from PIL import Image as PILImage
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    PILImage.new("RGB", (96, 64), (200, 120, 40)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_an_uploaded_file_s_own_parameters_answer_what_made_it(tmp_path: Path) -> None:
    """An A1111 PNG carries its prompt and settings; "what prompt was used for this?" reads
    them (not "upload/, seed None"), and an edit of it keeps its steps."""
    from assistant.core import Attachment

    assistant = open_assistant(tmp_path)
    attachment = Attachment(_png_with_parameters(A1111_BLOCK), filename="cabin.png")
    events = run(assistant, None, "what prompt was used for this?", (attachment,))
    conversation_id = events[0].conversation_id
    reply = next(e for e in events if isinstance(e, Reply)).text
    assert "Prompt in the file: “a cozy cabin at night, snow, warm windows”" in reply
    assert "Negative prompt in the file: “blurry, lowres”" in reply
    assert "Sampler Euler a" in reply and "CFG scale 5" in reply and "seed None" not in reply
    (upload,) = assistant.repo.conversation_images(conversation_id)
    assert upload.operation == "upload" and upload.params["embedded"]["Steps"] == "30"
    # the stored copy's own parameters chunk still says what made it, for pasting back into A1111
    from storage.pngmeta import read_png_metadata

    infotext = read_png_metadata(assistant.repo.image_bytes(upload)).infotext
    assert infotext is not None and infotext.prompt == "a cozy cabin at night, snow, warm windows"
    assert infotext.negative_prompt == "blurry, lowres"
    assert {k: infotext.params.get(k) for k in ("Steps", "Sampler", "CFG scale", "Seed", "Model")} == {
        "Steps": "30", "Sampler": "Euler a", "CFG scale": "5", "Seed": "42", "Model": "sd15"
    }  # fmt: skip
    assert infotext.params["Size"] == "96x64"  # the stored pixels' size, not the file's claim

    (edited,) = images_of(run(assistant, conversation_id, "make it snowier"))
    image = assistant.repo.get_image(edited.id)
    generation, _ = assistant.repo.generation(image.generation_id or -1)
    assert generation.params["steps"] == 30 and generation.params["guidance"] == 5.0
    assert "cabin" in image.prompt  # the file's prompt is what the edit starts from

    plain = run(assistant, None, "what prompt made this?", (Attachment(png("red"), filename="p.png"),))
    assert "carries no generation parameters" in next(e for e in plain if isinstance(e, Reply)).text


def test_an_image_atelier_made_says_so_when_uploaded_again(tmp_path: Path) -> None:
    from assistant.core import Attachment

    assistant = open_assistant(tmp_path)
    (made,) = images_of(run(assistant, None, "a lighthouse at dusk"))
    stored = assistant.repo.get_image(made.id)
    data = assistant.repo.image_bytes(stored)
    events = run(assistant, None, "what prompt made this?", (Attachment(data, filename="mine.png"),))
    reply = next(e for e in events if isinstance(e, Reply)).text
    assert f"Atelier made it (#1 of conversation {stored.conversation_id}, generate)" in reply
    assert f"Prompt in the file: “{stored.prompt[:40]}" in reply


def test_seed_minus_one_re_rolls_with_a_random_seed_as_in_automatic1111(tmp_path: Path) -> None:
    assistant, conversation_id = start(tmp_path)
    first = assistant.repo.get_image_by_number(conversation_id, 1)
    events = run(assistant, conversation_id, "seed -1")
    (image,) = images_of(events)
    again = assistant.repo.get_image(image.id)
    assert again.prompt == first.prompt and again.seed not in (None, -1, first.seed)
    assert "Regenerated #1 with a new seed" in str(events) and "seed -1" not in again.prompt


@pytest.mark.parametrize(
    ("text", "strength"),
    [
        ("make it snowier, strength 0.3", 0.3),
        ("make it snowier, denoising strength: 0.9", 0.9),
        ("denoise 40%", 0.4),
    ],
)
def test_a_strength_typed_as_in_automatic1111_is_the_edit_strength(
    tmp_path: Path, text: str, strength: float
) -> None:
    assistant, conversation_id = start(tmp_path)
    (image,) = images_of(run(assistant, conversation_id, text))
    stored = assistant.repo.get_image(image.id)
    generation, _ = assistant.repo.generation(stored.generation_id or -1)
    assert generation.params["strength"] == strength
    assert "strength" not in stored.prompt and "denois" not in stored.prompt


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("make it snowier", "Edited #1: 1 image."),
        ("flip it", "Flipped #1 horizontally: 1 image."),
        ("rotate #1 left", "Rotated #1 90° left: 1 image."),
        ("crop #1 to 16:9", "Cropped #1 to 16:9: 1 image."),
        ("make it black and white", "Made #1 black and white: 1 image."),
        ("upscale #1", "Upscaled #1 2×: 1 image."),
        ("three variations of #1", "Variations of #1: 3 images."),
    ],
)
def test_a_reply_says_what_was_done_to_which_image(tmp_path: Path, text: str, reply: str) -> None:
    """Read later, or far down a long chat, "Done: 1 image." says nothing; the reply names both."""
    assistant, conversation_id = start(tmp_path)
    events = run(assistant, conversation_id, text)
    (said,) = [e for e in events if isinstance(e, Reply)]
    assert said.text.startswith(reply), said.text


def test_a_re_run_the_backend_draws_identically_says_so(tmp_path: Path) -> None:
    """The sketch renderer ignores CFG: "cfg 12" gives #1's pixels again, and the reply says it."""
    assistant, conversation_id = start(tmp_path)
    said = next(e for e in run(assistant, conversation_id, "cfg 12") if isinstance(e, Reply)).text
    assert (
        "The result is pixel for pixel #1: the offline backend draws it the same with these settings" in said
    )
    again = next(e for e in run(assistant, conversation_id, "seed 5") if isinstance(e, Reply)).text
    assert "pixel for pixel" not in again  # another seed is another picture


class StopAtStep:
    """The offline backend, with the user pressing Stop when its progress reaches `step`.

    The cancel lands in the backend's own thread at that exact step, as the UI's Stop does
    between steps, so which images were finished is certain.
    """

    def __init__(self, step: int) -> None:
        from tools.offline import OfflineBackend

        self.inner = OfflineBackend()
        self.name, self.model, self.capabilities = self.inner.name, self.inner.model, self.inner.capabilities
        self.step = step
        self.calls = 0

    def estimate_cost(self, request: object) -> float:
        return 0.0

    def run(self, request, progress=None, cancel=None):  # type: ignore[no-untyped-def]
        done = self.calls * request.steps * request.n
        self.calls += 1

        def pressed_stop_at(step: int, total: int) -> None:
            if progress is not None:
                progress(step, total)
            if cancel is not None and done + step == self.step:
                cancel.cancel()

        return self.inner.run(request, pressed_stop_at, cancel)


def stopping_assistant(tmp_path: Path, step: int) -> tuple[Assistant, StopAtStep]:
    from assistant.runtime import open_repository
    from assistant.settings import Settings

    settings = Settings(data_dir=tmp_path, backend="offline", width=128, height=128, steps=4)
    backend = StopAtStep(step)
    return Assistant(settings, open_repository(settings), backend=backend), backend


def test_stop_part_way_through_four_images_keeps_the_two_already_finished(tmp_path: Path) -> None:
    assistant, backend = stopping_assistant(tmp_path, step=2 * 4 + 1)  # in the third image
    events = run(assistant, None, "four of a lighthouse at dusk")
    conversation_id = events[0].conversation_id
    kept = images_of(events)
    assert [image.number for image in kept] == [1, 2]
    stop = events[-1]
    assert isinstance(stop, Failed) and stop.cancelled
    assert stop.message.startswith("Stopped: kept the 2 images finished before you stopped")
    repo = assistant.repo
    reply = repo.messages(conversation_id)[-1]
    assert (reply.role, reply.status, reply.content) == ("assistant", "cancelled", stop.message)
    assert [image.message_id for image in repo.conversation_images(conversation_id)] == [reply.id] * 2
    (call,) = repo.generations(conversation_id)  # one call, stopped, with the two images it finished
    assert call.status == "cancelled" and (call.params or {})["n"] == 4
    # the kept images are whole, on record and replay to the same bytes
    for image in kept:
        original, _, identical = assistant.replay(image.id)
        assert identical and original.operation == "generate"
    # the conversation goes on; "try again" runs the whole request, all four
    backend.step = -1
    events = run(assistant, conversation_id, "try again")
    assert [image.number for image in images_of(events)] == [3, 4, 5, 6]


def test_stop_while_the_second_of_two_re_rolls_runs_keeps_the_first(tmp_path: Path) -> None:
    assistant, backend = stopping_assistant(tmp_path, step=-1)
    conversation_id = run(assistant, None, "two of a cozy cabin at night")[0].conversation_id
    backend.calls, backend.step = 0, 4 + 2  # the second re-roll's second step
    events = run(assistant, conversation_id, "regenerate #1 and #2")
    (kept,) = images_of(events)
    first = assistant.repo.get_image_by_number(conversation_id, 1)
    params = assistant.repo.get_image(kept.id).params or {}
    assert kept.number == 3 and params["regenerated_from"] == first.id
    assert isinstance(events[-1], Failed) and events[-1].cancelled
    assert "kept the 1 image finished" in events[-1].message
    assert numbers(assistant, conversation_id) == [1, 2, 3]
    # both calls are on record: the finished one and the stopped one, which made nothing
    calls = assistant.repo.generations(conversation_id)[-2:]
    assert [call.status for call in calls] == ["ok", "cancelled"]


def test_stop_in_the_first_image_still_keeps_nothing(tmp_path: Path) -> None:
    assistant, _ = stopping_assistant(tmp_path, step=2)
    events = run(assistant, None, "four of a lighthouse at dusk")
    assert images_of(events) == []
    assert failure(events) == "Cancelled: you stopped this request before it finished, so no image was made."
    assert numbers(assistant, events[0].conversation_id) == []
