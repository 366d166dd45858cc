"""PNG files carry their own recipe: A1111 `parameters` infotext plus an `atelier` lineage chunk.

Checked with plain Pillow on the file on disk, as another tool (A1111's PNG Info, civitai,
ComfyUI loaders) would read it.
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image as PILImage

from storage.pngmeta import encode_png, format_infotext, parse_infotext, read_png_metadata
from storage.repository import Repository
from tests.storage.helpers import add_generated, tiny_image

MODEL = "org/sdxl:v1.0, fp16"  # a comma and a colon: must be quoted, and come back intact


@pytest.fixture
def stored(repo: Repository) -> tuple[Repository, int, int]:
    conversation = repo.create_conversation()
    root = add_generated(repo, conversation.id, "a cat", index=1)
    image = add_generated(
        repo,
        conversation.id,
        "a red fox in snow,\nwatercolor, (masterpiece:1.2)",
        negative_prompt="blurry, lowres",
        parent_id=root.id,
        instruction="make it a fox",
        revised_prompt="A red fox standing in fresh snow",
        seed=3_141_592_653,
        params={"steps": 30, "sampler": "DPM++ 2M Karras", "guidance": 7.5, "strength": 0.55},
        model=MODEL,
        index=2,
    )
    return repo, root.id, image.id


def test_file_on_disk_has_a1111_parameters_layout(stored: tuple[Repository, int, int]) -> None:
    repo, _, image_id = stored
    image = repo.get_image(image_id)
    with PILImage.open(repo.image_path(image)) as opened:
        chunks = dict(opened.text)
        assert opened.size == (8, 8)
    lines = chunks["parameters"].split("\n")
    assert lines[:2] == ["a red fox in snow,", "watercolor, (masterpiece:1.2)"]
    assert lines[2] == "Negative prompt: blurry, lowres"
    last = lines[-1]
    assert len(lines) == 4
    assert last.startswith(
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 3141592653, Size: 8x8, "
    )
    assert f"Model: {json.dumps(MODEL)}" in last
    assert "Denoising strength: 0.55" in last


def test_reader_parses_what_atelier_wrote(stored: tuple[Repository, int, int]) -> None:
    repo, root_id, image_id = stored
    image = repo.get_image(image_id)
    metadata = read_png_metadata(repo.image_bytes(image))
    assert metadata.infotext is not None
    assert metadata.infotext.prompt == "a red fox in snow,\nwatercolor, (masterpiece:1.2)"
    assert metadata.infotext.negative_prompt == "blurry, lowres"
    params = metadata.infotext.params
    assert params["Steps"] == "30"
    assert params["Sampler"] == "DPM++ 2M Karras"
    assert params["CFG scale"] == "7.5"
    assert params["Seed"] == "3141592653"
    assert params["Size"] == "8x8"
    assert params["Model"] == MODEL
    assert params["Operation"] == "edit"
    assert metadata.lineage == {
        "id": image_id,
        "conversation_id": image.conversation_id,
        "number": 2,
        "parent_id": root_id,
        "operation": "edit",
        "instruction": "make it a fox",
        "revised_prompt": "A red fox standing in fresh snow",
    }


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "comma, inside",
        "colon: inside",
        'quote " inside, and \\ backslash',
        "new\nline",
        "ünïcødé, 日本語: ok",
        "Steps: 5, Seed: 6",
    ],
)
def test_awkward_values_round_trip(value: str) -> None:
    text = format_infotext(
        "prompt", "neg", {"Steps": 20, "Sampler": value, "Seed": 1, "Size": "8x8", "Model": value}
    )
    assert text.count("\n") == 2  # values never break the three-line layout
    parsed = parse_infotext(text)
    assert parsed.prompt == "prompt"
    assert parsed.negative_prompt == "neg"
    assert parsed.params == {"Steps": "20", "Sampler": value, "Seed": "1", "Size": "8x8", "Model": value}


def test_prompt_without_negative_and_a1111_written_text() -> None:
    # As A1111 itself writes it (unquoted simple values, several prompt lines).
    a1111 = (
        "masterpiece, best quality, 1girl\nsitting on a bench\n"
        "Negative prompt: lowres, bad anatomy\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x768, "
        'Model hash: 45dee52b, Model: anything-v3, Lora hashes: "foo: abc, bar: def", Version: v1.7.0'
    )
    parsed = parse_infotext(a1111)
    assert parsed.prompt == "masterpiece, best quality, 1girl\nsitting on a bench"
    assert parsed.negative_prompt == "lowres, bad anatomy"
    assert parsed.params["Size"] == "512x768"
    assert parsed.params["Lora hashes"] == "foo: abc, bar: def"
    assert parse_infotext(format_infotext("just a prompt", "", {"Seed": 3})).negative_prompt == ""


def test_encode_is_deterministic_and_keeps_pixels() -> None:
    image = tiny_image(4)
    first = encode_png(image, "p\nSteps: 1, Size: 8x8", {"id": 1})
    assert first == encode_png(image, "p\nSteps: 1, Size: 8x8", {"id": 1})
    metadata = read_png_metadata(first)
    assert metadata.lineage == {"id": 1}
    with PILImage.open(io.BytesIO(first)) as opened:
        assert list(opened.convert("RGB").getdata()) == list(image.getdata())


def test_png_without_atelier_chunks_reads_as_empty() -> None:
    plain = encode_png(tiny_image(1), None, None)
    metadata = read_png_metadata(plain)
    assert metadata.infotext is None and metadata.lineage is None
