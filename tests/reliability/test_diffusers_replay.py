"""Replay on the tiny random-weight diffusers pipeline: every image of a batch replays bit for bit.

Alone, an image of a batch of two gets the same noise but its matmuls run at another batch
size, which can move a pixel by a level; `atelier replay` must still say "identical".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.reliability.helpers import images_made, turn
from tests.reliability.test_backend_faults import diffusers_assistant


@pytest.mark.slow
def test_each_image_of_a_diffusers_batch_replays_pixel_identical(tmp_path: Path, tiny_model: Path) -> None:
    assistant = diffusers_assistant(tmp_path / "data", tiny_model)
    made = images_made(turn(assistant, None, "2 images of a red fox in the snow"))
    assert [image.number for image in made] == [1, 2]
    repo = assistant.repo
    for ready in made:
        original, pixels, identical = assistant.replay(ready.id)
        assert identical, f"#{ready.number} did not replay bit for bit"
        assert np.array_equal(np.asarray(pixels), np.asarray(repo.load_image(original)))
    first, second = (repo.get_image(ready.id) for ready in made)
    assert first.seed is not None
    assert second.seed == first.seed + 1  # each image keeps its own seed in the record


@pytest.mark.slow
def test_negative_alone_redraws_the_image_with_its_seed_and_that_negative(
    tmp_path: Path, tiny_model: Path
) -> None:
    """ "negative: blurry, text" after a picture is A1111's compare: same prompt and seed, new
    negative prompt; the words never reach the positive prompt."""
    assistant = diffusers_assistant(tmp_path / "data", tiny_model)
    first_turn = turn(assistant, None, "a red fox in the snow")
    (first,) = images_made(first_turn)
    conversation_id = first_turn[0].conversation_id
    (second,) = images_made(turn(assistant, conversation_id, "negative: blurry, text"))
    repo = assistant.repo
    original, redrawn = repo.get_image(first.id), repo.get_image(second.id)
    assert redrawn.negative_prompt == "blurry, text" != original.negative_prompt
    assert redrawn.prompt == original.prompt and redrawn.seed == original.seed
    assert "blurry" not in redrawn.prompt
    a, b = (np.asarray(repo.load_image(image)) for image in (original, redrawn))
    assert not np.array_equal(a, b)  # the negative prompt reached the pipeline


@pytest.mark.slow
def test_replay_with_another_model_configured_names_the_model_that_made_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Another model's pixels are not a replay: it is refused, naming the model to set back."""
    import shutil

    from tools.base import InvalidRequest

    assistant = diffusers_assistant(tmp_path / "data", tiny_model)
    (made,) = images_made(turn(assistant, None, "a red fox in the snow"))
    other = shutil.copytree(tiny_model, tmp_path / "other-model")
    switched = diffusers_assistant(tmp_path / "data", other)
    with pytest.raises(InvalidRequest) as refused:
        switched.replay(made.id)
    assert refused.value.user_message == (
        f"Image {made.id} was made with the model {tiny_model}, but {other} is configured; "
        f"set ATELIER_DIFFUSERS_MODEL={tiny_model} to replay it."
    )
    assert switched.repo.count_images() == 1
    assert diffusers_assistant(tmp_path / "data", tiny_model).replay(made.id)[2]  # and set back, it replays


@pytest.mark.slow
def test_a_sampler_named_in_chat_is_used_kept_by_edits_and_replayed(tmp_path: Path, tiny_model: Path) -> None:
    """ "sampler euler a" as A1111 users type it: the model's scheduler is swapped for that one,
    later edits keep it, a replay matches, and an unknown name is refused with the choices."""
    from assistant.events import Failed

    assistant = diffusers_assistant(tmp_path / "data", tiny_model)
    repo = assistant.repo
    events = turn(assistant, None, "a red fox in the snow, sampler euler a")
    (first,) = images_made(events)
    conversation_id = events[0].conversation_id
    made = repo.get_image(first.id)
    assert "euler" not in made.prompt
    assert (made.params or {})["sampler"] == "euler_a"
    assert (made.params or {})["scheduler"] == "EulerAncestralDiscreteScheduler"
    (edited,) = images_made(turn(assistant, conversation_id, "make it snowier"))
    assert (repo.get_image(edited.id).params or {})["scheduler"] == "EulerAncestralDiscreteScheduler"
    assert assistant.replay(edited.id)[2]

    (redrawn,) = images_made(turn(assistant, conversation_id, "#1 with DPM++ 2M Karras"))
    params = repo.get_image(redrawn.id).params or {}
    assert (params["sampler"], params["scheduler"]) == ("dpm++_karras", "DPMSolverMultistepScheduler")
    assert repo.get_image(redrawn.id).seed == made.seed  # the same picture, another sampler

    refused = turn(assistant, conversation_id, "use the foobar sampler")
    assert isinstance(refused[-1], Failed)
    assert refused[-1].message.startswith("Unknown sampler 'foobar'. Choose one of: default, euler, euler_a")
    pasted = turn(
        assistant, None, "a lighthouse\nSteps: 3, Sampler: DPM++ 2M SDE Karras, Seed: 5, Size: 64x64"
    )
    (block,) = images_made(pasted)
    assert (repo.get_image(block.id).params or {})["sampler"] == "dpm++_sde_karras"
    assert "Sampler" not in str(pasted[-1])
