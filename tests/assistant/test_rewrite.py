"""Prompt rewriting and edits: the user's words kept, only what was asked changed."""

from __future__ import annotations

import re

import pytest

from assistant.rewrite import (
    COLORS,
    DEFAULT_NEGATIVE,
    IMPROVED_TERMS,
    MOOD_LIGHTING,
    NEUTRAL_LIGHTING,
    STYLE_PRESETS,
    TIME_LIGHTING,
    apply_edit,
    build_negative,
    detect_style,
    is_keep_clause,
    normalize_style,
    only_keeps,
    reduced_terms,
    removed_terms,
    rewrite_prompt,
    split_instruction,
    style_prompt,
)

CABIN, _ = rewrite_prompt("a cozy cabin in the woods at night")
FOX = "a red fox sitting on a mossy rock, detailed environment, soft natural lighting, highly detailed"

TIME_WEATHER_WORDS = (
    "night",
    "sunset",
    "sunrise",
    "dawn",
    "dusk",
    "morning",
    "evening",
    "snow",
    "rain",
    "fog",
    "storm",
)


def _segments(prompt: str) -> list[str]:
    return [s.strip() for s in prompt.split(",")]


# -- rewrite_prompt ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "idea",
    [
        "a cozy cabin",
        "a red fox sitting on a mossy rock",
        "portrait of an old sailor",
        "a mountain lake",
        "a teapot",
    ],
)
def test_rewrite_keeps_the_idea_first_and_injects_no_time_weather_or_colour(idea: str) -> None:
    prompt, negative = rewrite_prompt(idea)
    assert prompt.startswith(idea + ", ")
    added = prompt[len(idea) :].lower()
    for word in (*TIME_WEATHER_WORDS, *COLORS):
        assert not re.search(rf"\b{word}\b", added), f"{word!r} was added to {idea!r}"
    assert NEUTRAL_LIGHTING in prompt
    assert negative == ", ".join(DEFAULT_NEGATIVE)


@pytest.mark.parametrize(
    ("idea", "lighting"),
    [
        ("a cabin at night", TIME_LIGHTING["night"]),
        ("a beach at sunset", TIME_LIGHTING["sunset"]),
        ("a farm at dawn", TIME_LIGHTING["sunrise"]),
        ("a market at noon", TIME_LIGHTING["day"]),
    ],
)
def test_rewrite_lighting_follows_the_time_the_user_named(idea: str, lighting: str) -> None:
    prompt, _ = rewrite_prompt(idea)
    assert lighting in prompt
    assert NEUTRAL_LIGHTING not in prompt


def test_rewrite_adds_structure_terms() -> None:
    prompt, _ = rewrite_prompt("a mountain lake")
    assert "wide establishing view" in prompt
    assert "highly detailed" in prompt
    portrait, _ = rewrite_prompt("portrait of an old sailor")
    assert "portrait framing" in portrait


def test_rewrite_is_deterministic() -> None:
    assert rewrite_prompt("a fox", "anime") == rewrite_prompt("a fox", "anime")
    assert rewrite_prompt("  a fox.  ") == rewrite_prompt("a fox")


def test_rewrite_with_style_adds_positive_and_negative_terms() -> None:
    prompt, negative = rewrite_prompt("a fox", "watercolor")
    preset = STYLE_PRESETS["watercolor"]
    assert all(term in prompt for term in preset.positive)
    assert all(term in negative for term in preset.negative)
    assert all(term in negative for term in DEFAULT_NEGATIVE)


def test_rewrite_does_not_repeat_what_the_idea_says() -> None:
    prompt, _ = rewrite_prompt("a fox in anime style", "anime")
    assert prompt.lower().count("anime style") == 1
    lit, _ = rewrite_prompt("a street lit by lanterns")
    assert NEUTRAL_LIGHTING not in lit


def test_negative_never_forbids_what_the_user_asked_for() -> None:
    _, negative = rewrite_prompt("a blurry photo of a ghost holding a sign with text")
    assert "blurry" not in _segments(negative)
    assert "text" not in _segments(negative)
    assert "low quality" in negative
    _, anime = rewrite_prompt("a photo of a cat", "anime")
    assert "photo" not in _segments(anime)


def test_style_prompt_skips_composition_terms() -> None:
    prompt, negative = style_prompt("a watercolor", "watercolor")
    assert prompt.startswith("a watercolor, ")
    assert "watercolor painting" in prompt
    assert "composition" not in prompt
    assert "photorealistic" in negative


# -- style presets ----------------------------------------------------------------------------


def test_presets_are_complete() -> None:
    expected = {
        "photographic",
        "cinematic",
        "anime",
        "watercolor",
        "oil painting",
        "pixel art",
        "3d render",
        "line art",
        "digital art",
        "fantasy art",
        "cyberpunk",
    }
    assert expected <= set(STYLE_PRESETS)
    for name, preset in STYLE_PRESETS.items():
        assert preset.name == name
        assert preset.positive and preset.negative and preset.aliases
        for word in TIME_WEATHER_WORDS:
            assert not any(re.search(rf"\b{word}\b", t) for t in preset.positive), (name, word)


@pytest.mark.parametrize("name", sorted(STYLE_PRESETS))
def test_every_preset_is_detected_by_name(name: str) -> None:
    assert detect_style(f"a fox in {name} style") == name
    assert detect_style(f"as {STYLE_PRESETS[name].aliases[0]}") == name


@pytest.mark.parametrize(
    ("text", "style"),
    [
        ("in anime style", "anime"),
        ("as pixel art", "pixel art"),
        ("turn this photo into a watercolor", "watercolor"),
        ("an oil painting of a ship", "oil painting"),
        ("make it cinematic", "cinematic"),
        ("a neon-noir alley", "cyberpunk"),
        ("in neon style", "cyberpunk"),
        ("a photo of a cat", None),
        ("a neon sign", None),
        ("a fox in a meadow", None),
        ("a cat as a pencil sketch", "pencil sketch"),
        ("a lighthouse in pencil", "pencil sketch"),
        ("a charcoal drawing of an old man", "charcoal"),
        ("a fox in charcoal", "charcoal"),
        ("a pencil on a desk", None),
        ("the charcoal grill in the garden", None),
    ],
)
def test_detect_style(text: str, style: str | None) -> None:
    assert detect_style(text) == style


def test_normalize_style_accepts_settings_spellings() -> None:
    assert normalize_style("Oil_Painting") == "oil painting"
    assert normalize_style("manga") == "anime"
    assert normalize_style("pixel-art") == "pixel art"
    assert normalize_style("nonsense") is None
    assert normalize_style(None) is None


def test_build_negative_for_unknown_style_is_the_default() -> None:
    assert build_negative("nonsense") == ", ".join(DEFAULT_NEGATIVE)


# -- apply_edit -------------------------------------------------------------------------------


def _kept(parent: str, edited: str, *, changed: tuple[str, ...] = ()) -> None:
    """Every segment of the parent survives unless it was one the edit was meant to change."""
    for segment in _segments(parent):
        if segment not in changed:
            assert segment in edited, f"{segment!r} lost in {edited!r}"


def test_time_of_day_replaces_the_old_one_and_its_lighting() -> None:
    edited = apply_edit(CABIN, "at sunset")
    assert edited.startswith("a cozy cabin in the woods at sunset, ")
    assert "night" not in edited
    assert TIME_LIGHTING["sunset"] in edited
    _kept(CABIN, edited, changed=("a cozy cabin in the woods at night", TIME_LIGHTING["night"]))


def test_time_of_day_is_added_after_the_subject_when_absent() -> None:
    edited = apply_edit(FOX, "make it night")
    assert edited.startswith("a red fox sitting on a mossy rock at night, ")
    assert TIME_LIGHTING["night"] in edited and NEUTRAL_LIGHTING not in edited


def test_bare_time_words_are_swapped_in_place() -> None:
    assert apply_edit("a night sky over a lake", "at dawn") == "a dawn sky over a lake"


def test_weather_add_intensify_reduce_remove() -> None:
    snowy = apply_edit(CABIN, "make it snowier")
    assert "heavy snowfall" in snowy
    _kept(CABIN, snowy)
    assert "blizzard" in apply_edit(snowy, "make it snowier")
    assert "light snow" in apply_edit(snowy, "less snow")
    clear = apply_edit(snowy, "remove the snow")
    assert "snow" not in clear
    assert clear == CABIN
    assert "rain" in apply_edit(CABIN, "make it rain")
    assert "thick fog" in apply_edit(CABIN, "more fog")


def test_colour_swap_changes_only_the_colour() -> None:
    edited = apply_edit(FOX, "make the fox blue")
    assert edited.startswith("a blue fox sitting on a mossy rock")
    assert "red" not in edited
    _kept(FOX, edited, changed=("a red fox sitting on a mossy rock",))
    assert apply_edit("an orange fox", "make the fox blue") == "a blue fox"
    assert apply_edit("a fox", "turn the fox purple") == "a purple fox"
    assert apply_edit("a cozy cabin", "change the cabin to red") == "a cozy red cabin"


def test_style_change_swaps_style_terms() -> None:
    watercolor = apply_edit(CABIN, "as a watercolor")
    assert "watercolor painting" in watercolor
    _kept(CABIN, watercolor)
    pixel = apply_edit(watercolor, "make it pixel art")
    assert "pixel art" in pixel
    assert "watercolor" not in pixel
    assert pixel.startswith("a cozy cabin in the woods at night")
    anime_idea = apply_edit("a fox in anime style, cel shading", "as an oil painting")
    assert "anime" not in anime_idea and "oil painting" in anime_idea


def test_lighting_changes_replace_the_neutral_lighting() -> None:
    darker = apply_edit(FOX, "make it darker")
    assert MOOD_LIGHTING["dark"] in darker and NEUTRAL_LIGHTING not in darker
    assert MOOD_LIGHTING["very dark"] in apply_edit(darker, "even darker")
    assert MOOD_LIGHTING["bright"] in apply_edit(darker, "make it brighter")
    # "darker" at night deepens the night instead of stacking a second low-key lighting term
    night_darker = apply_edit(CABIN, "make it darker")
    assert MOOD_LIGHTING["dark night"] in night_darker and MOOD_LIGHTING["dark"] not in night_darker
    assert night_darker.count("low-key") == 1
    assert apply_edit(night_darker, "even darker") == night_darker
    assert apply_edit(night_darker, "make it brighter") == CABIN  # a step back, not daylight
    # "darker" after "very dark" stays very dark; it never lightens
    very_dark = apply_edit(darker, "even darker")
    assert apply_edit(very_dark, "make it darker") == very_dark


def test_light_that_clashes_with_the_time_of_day_is_replaced_not_stacked() -> None:
    brighter = apply_edit(CABIN, "make it brighter")
    assert MOOD_LIGHTING["bright"] in brighter and TIME_LIGHTING["night"] not in brighter
    assert "at night" in brighter  # a brightly lit night: the time stays
    sunnier = apply_edit(CABIN, "make it sunnier")
    assert "sunshine" in sunnier and "night" not in sunnier and TIME_LIGHTING["day"] in sunnier
    day = apply_edit(FOX, "make it day")
    assert MOOD_LIGHTING["dark"] in (dark_day := apply_edit(day, "make it darker"))
    assert TIME_LIGHTING["day"] not in dark_day


def test_a_bit_more_weather_is_one_step_not_the_heaviest() -> None:
    assert "soft sunshine" in apply_edit(FOX, "make it a bit sunnier")
    assert "bright sunshine" in apply_edit(FOX, "make it sunnier")
    light = apply_edit(FOX, "a bit snowier")
    assert "light snow" in light
    falling = apply_edit(light, "slightly snowier")
    assert "falling snow" in falling and "light snow" not in falling
    assert "heavy snowfall" in apply_edit(falling, "a little bit snowier")


def test_clothing_is_worn_and_a_look_is_what_the_thing_is() -> None:
    hat = apply_edit(FOX, "put the fox in a hat")
    assert hat.startswith("a red fox wearing a hat sitting on a mossy rock,")
    assert apply_edit(FOX, "give the fox a red scarf").startswith("a red fox wearing a red scarf sitting")
    assert apply_edit(FOX, "dress the fox up as a pirate").startswith("a red fox dressed as a pirate sitting")
    assert apply_edit(FOX, "have the fox wear sunglasses").startswith("a red fox wearing sunglasses")
    # a place is no garment; a friend is no garment
    assert apply_edit(FOX, "put the fox in a basket").startswith("a red fox sitting in a basket,")
    assert apply_edit(FOX, "give the fox a friend").startswith("a red fox with a friend sitting")
    # "look fluffier" is fluffier; "look at the camera" is still where it looks
    fluffier = apply_edit(FOX, "make the fox look fluffier")
    assert fluffier.startswith("a very fluffy red fox sitting") and "look" not in fluffier
    assert "the fox looking at the camera" in apply_edit(FOX, "make the fox look at the camera")
    bigger = apply_edit(FOX, "make the rock look bigger")
    assert "a large mossy rock" in bigger and "look" not in bigger


def test_a_change_said_after_the_idea_changes_the_picture_and_is_not_drawn_as_words() -> None:
    cyber, _ = rewrite_prompt("a cat, but make it cyberpunk")
    assert cyber.startswith("a cat, ") and "but" not in cyber and "make it" not in cyber
    assert "neon" in cyber
    night, _ = rewrite_prompt("a cat but at night")
    assert night.startswith("a cat at night,") and TIME_LIGHTING["night"] in night
    snowy, _ = rewrite_prompt("a cabin in the woods, make it snowy")
    assert snowy.startswith("a cabin in the woods, falling snow,")
    street, negative = rewrite_prompt("a street but without cars")
    assert "cars" not in street and negative.endswith(", cars")
    # "but" inside one idea is part of it
    assert rewrite_prompt("a small but cozy cabin")[0].startswith("a small but cozy cabin,")


def test_a_shallow_depth_of_field_gets_no_layered_background() -> None:
    photo, _ = rewrite_prompt("a puppy in autumn leaves, 35mm, shallow depth of field")
    assert "layered foreground and background" not in photo and "subject in sharp focus" in photo
    assert "layered foreground and background" in rewrite_prompt("a puppy in autumn leaves in a park")[0]


def test_look_like_pop_and_a_season_without_snow() -> None:
    winter = apply_edit(CABIN, "make it look like winter")
    assert "in winter" in winter and "look" not in winter and "like" not in winter
    autumn = apply_edit(apply_edit(CABIN, "make it snowier"), "make it feel like autumn")
    assert "in autumn" in autumn and "snow" not in autumn
    assert "snowman" in apply_edit("a snowman in a garden, falling snow", "make it summer")
    pop = apply_edit(FOX, "make it pop")
    assert "vibrant colors, bold contrast" in pop and "pop" not in pop
    assert apply_edit(pop, "make it punchier") == pop


def test_the_camera_moves_one_angle_at_a_time() -> None:
    above = apply_edit(CABIN, "from above")
    assert "high angle shot, seen from above" in above and above.count("from above") == 1
    below = apply_edit(above, "from a low angle")
    assert "low angle shot, seen from below" in below and "seen from above" not in below
    assert "different camera angle" in apply_edit(FOX, "try a different angle")
    assert "aerial view" in apply_edit(FOX, "a bird's eye view")
    assert "side view" in apply_edit(FOX, "show it from the side")


def test_a_new_background_replaces_the_old_setting() -> None:
    mountains = apply_edit(CABIN, "change the background to mountains")
    assert mountains.startswith("a cozy cabin at night, mountains in the background,")
    city = apply_edit(mountains, "replace the background with a city skyline")
    assert "a city skyline in the background" in city and "mountains" not in city
    assert "a beach in the background" in apply_edit(CABIN, "the background should be a beach")
    # a blurred background is depth of field, not a backdrop called "blurry"
    assert "shallow depth of field" in apply_edit(CABIN, "make the background blurry")


def test_a_thing_put_somewhere_it_is_not_yet_is_added_there() -> None:
    fox = apply_edit(CABIN, "put the fox in front of the cabin")
    assert fox.startswith("a cozy cabin in the woods at night, a fox in front of the cabin,")
    # the subject itself moves: its setting is replaced
    assert apply_edit(CABIN, "put the cabin on a beach").startswith("a cozy cabin on a beach at night,")


def test_vague_praise_words_raise_the_craft_terms_once() -> None:
    better = apply_edit(CABIN, "make it better")
    assert IMPROVED_TERMS in better and "better" not in better
    for said in ("improve it", "more detail", "make it prettier", "enhance the quality"):
        assert apply_edit(CABIN, said) == better, said
    assert apply_edit(better, "make it nicer") == better


def test_a_logo_is_a_design_on_a_plain_ground_not_a_scene() -> None:
    logo, negative = rewrite_prompt("a minimalist logo of a mountain")
    assert logo.startswith("a minimalist logo of a mountain, plain white background,")
    assert "flat vector style" in logo
    for scene_word in ("environment", "establishing", "lighting", "depth of field"):
        assert scene_word not in logo
    assert "photorealistic" in negative and negative.count("photo,") == 1
    # a style asked for replaces the flat vector look, and nothing argues with it
    painted, painted_negative = rewrite_prompt("a logo of a fox", "watercolor")
    assert "watercolor painting" in painted and "flat vector" not in painted and "crisp edges" not in painted
    assert painted_negative.count("photorealistic") == 1
    # the user's own words for text are kept out of the negative prompt
    assert "text" not in rewrite_prompt('a coffee shop logo with the text "Bean"')[1].split(", ")


def test_removing_the_background_leaves_the_subject_on_plain_white() -> None:
    for said in ("remove the background", "white background", "make the background white", "no background"):
        cut = apply_edit(CABIN, said)
        assert cut.startswith("a cozy cabin at night, isolated on a plain white background,"), said
        assert "woods" not in cut and "detailed environment" not in cut and "layered foreground" not in cut
    # an upload has no prompt: the request is all there is
    assert apply_edit("", "remove the background") == "isolated on a plain white background"
    # the subject itself can still be removed
    assert "cabin" not in apply_edit(CABIN, "remove the cabin")


def test_lettering_is_written_in_the_picture_and_never_forbidden() -> None:
    door = apply_edit(CABIN, "write 'welcome' on the door")
    assert "the words “welcome” written on the door" in door and "write" not in door
    assert "the words “Happy Birthday” written" in apply_edit(CABIN, "add the text 'Happy Birthday'")
    # the default negative "text" goes when the words ask for lettering
    assert "text" not in rewrite_prompt("a sign that says OPEN")[1].split(", ")
    assert "text" not in rewrite_prompt('a poster with the title "Atelier"')[1].split(", ")
    assert "text" in rewrite_prompt("a cat's hat")[1].split(", ")


def test_one_weather_swapped_for_another_and_a_part_of_a_thing_recoloured() -> None:
    snowy = apply_edit(CABIN, "make it snowier")
    rainy = apply_edit(snowy, "replace the snow with rain")
    assert "snow" not in rainy and "rain" in rainy and "replace" not in rainy
    foggy = apply_edit(snowy, "swap the snow for fog")
    assert "fog" in foggy and "snow" not in foggy
    roof = apply_edit(CABIN, "change the cabin's roof to red")
    assert "red roof" in roof and "change" not in roof


def test_a_thing_made_to_do_something_does_it_in_the_prompt() -> None:
    assert apply_edit(FOX, "make the fox smile").startswith("a smiling red fox sitting on a mossy rock")
    # a new pose replaces the old one and keeps where it is
    assert apply_edit(FOX, "make the fox sleep").startswith("a red fox sleeping on a mossy rock,")
    running = apply_edit(FOX, "have the fox run through the forest")
    assert running.startswith("a red fox running through the forest,") and "mossy rock" not in running
    looking = apply_edit(FOX, "the fox should look at the camera")
    assert looking.startswith("a red fox sitting on a mossy rock, the fox looking at the camera,")
    assert "should" not in looking
    # a comparative makes the thing very so, and a second one more so
    fluffier = apply_edit(FOX, "make the fox fluffier")
    assert fluffier.startswith("a very fluffy red fox sitting") and "fluffier" not in fluffier
    assert apply_edit(fluffier, "make the fox fluffier").startswith("an extremely fluffy red fox")
    assert apply_edit(FOX, "make the rock mossier").startswith("a red fox sitting on a very mossy rock,")


@pytest.mark.parametrize(
    ("instruction", "added"),
    [
        ("put a light in the window", "with a light in the window"),
        ("add a rainbow", "with a rainbow"),
        ("add a snowman", "with a snowman"),
        ("add a windmill", "with a windmill"),
    ],
)
def test_words_that_start_like_weather_are_things_not_weather(instruction: str, added: str) -> None:
    edited = apply_edit(CABIN, instruction)
    assert added in edited
    assert not re.search(r"\b(?:windy|rain|fog|snow(?:fall)?|wind)\b,", edited)


def test_background_blur_is_depth_of_field_not_a_picture_of_the_words() -> None:
    for instruction in ("blur the background", "make the background out of focus", "add bokeh"):
        edited = apply_edit(CABIN, instruction)
        assert edited.startswith("a cozy cabin in the woods at night, ")
        assert (
            "shallow depth of field" in edited and "blur the" not in edited and "out of focus" not in edited
        )
    once = apply_edit(CABIN, "blur the background")
    assert apply_edit(once, "add bokeh") == once


def test_add_and_remove() -> None:
    moon = apply_edit(CABIN, "add a moon")
    assert moon.startswith("a cozy cabin in the woods at night with a moon, ")
    _kept(CABIN, moon, changed=("a cozy cabin in the woods at night",))
    assert apply_edit(moon, "remove the moon") == CABIN
    assert apply_edit(moon, "without the moon") == CABIN
    assert apply_edit("a red fox sitting on a mossy rock", "remove the rock") == "a red fox sitting"


def test_unknown_instruction_becomes_a_clause_after_the_subject() -> None:
    edited = apply_edit(FOX, "a friendly bear nearby")
    assert _segments(edited)[:2] == ["a red fox sitting on a mossy rock", "a friendly bear nearby"]
    _kept(FOX, edited)


def test_several_changes_in_one_instruction() -> None:
    assert split_instruction("at sunset, and add a moon") == ["at sunset", "add a moon"]
    edited = apply_edit(CABIN, "at sunset and add a moon")
    assert edited.startswith("a cozy cabin in the woods at sunset with a moon, ")


def test_edit_of_an_upload_without_prompt() -> None:
    assert apply_edit("", "make it snowier") == "heavy snowfall"
    assert apply_edit("", "add a hat") == "a hat"


def test_edit_is_deterministic_and_cleans_filler() -> None:
    assert apply_edit(CABIN, "but at sunset please") == apply_edit(CABIN, "at sunset")
    assert apply_edit(CABIN, "now make it snowier") == apply_edit(CABIN, "make it snowier")


def test_removed_terms_feed_the_negative_prompt() -> None:
    assert removed_terms("remove the snow") == ("snow",)
    assert removed_terms("without the moon and no people") == ("moon", "people")
    assert removed_terms("at sunset") == ()


SNOW_FOX = "a red fox standing in deep snow, heavy snowfall, detailed environment, highly detailed"


def test_keep_clauses_keep_the_parents_words_and_add_none() -> None:
    assert apply_edit(SNOW_FOX, "keep the fox") == SNOW_FOX
    assert apply_edit(FOX, "leave the rock as it is") == FOX
    assert apply_edit(FOX, "don't change the fox") == FOX
    edited = apply_edit(SNOW_FOX, "keep the fox, remove the snow")
    assert edited == "a red fox standing, detailed environment, highly detailed"
    assert "keep" not in edited


@pytest.mark.parametrize(
    "instruction",
    ["keep the fox but remove the snow", "remove the snow and keep the fox", "keep the fox; no snow"],
)
def test_keep_clauses_split_from_the_change(instruction: str) -> None:
    edited = apply_edit(SNOW_FOX, instruction)
    assert "snow" not in edited and "keep" not in edited
    assert edited.startswith("a red fox standing")
    assert removed_terms(instruction) == ("snow",)


def test_keep_then_change() -> None:
    assert split_instruction("leave the fox as it is but at sunset") == [
        "leave the fox as it is",
        "at sunset",
    ]
    edited = apply_edit(SNOW_FOX, "keep the fox but at sunset")
    assert edited.startswith("a red fox standing in deep snow at sunset, heavy snowfall")


def test_keeping_is_not_removing() -> None:
    assert removed_terms("don't remove the snow") == ()
    assert apply_edit(SNOW_FOX, "don't remove the snow") == SNOW_FOX
    assert is_keep_clause("keep the fox") and is_keep_clause("but keep the fox")
    assert not is_keep_clause("remove the snow")


def test_only_keeps() -> None:
    assert only_keeps("keep the fox")
    assert only_keeps("keep the fox and leave the snow")
    assert not only_keeps("keep the fox, remove the snow")
    assert not only_keeps("")


def test_less_weather_keeps_the_preposition() -> None:
    assert (
        apply_edit("a red fox in the snow at sunset", "make it less snowy")
        == "a red fox in light snow at sunset"
    )


# -- "less X" never adds X; repeated weather; object-aware add, replace, remove ------------------

SKY = "a sunflower field under a blue sky, dominant blue tones, soft natural lighting, highly detailed"


@pytest.mark.parametrize(
    ("parent", "instruction", "gone"),
    [
        (SKY, "less blue", "dominant blue tones"),
        (SKY, "make it less blue", "dominant blue tones"),
        (SKY, "not so blue", "dominant blue tones"),
        (CABIN, "less red", None),
        (CABIN, "a bit less detail", "highly detailed"),
    ],
)
def test_less_of_something_only_takes_away(parent: str, instruction: str, gone: str | None) -> None:
    edited = apply_edit(parent, instruction)
    word = instruction.split()[-1]
    assert edited.lower().count(word) <= parent.lower().count(word), edited
    assert "less" not in edited and "not so" not in edited
    if gone:
        assert gone not in edited
    assert edited.startswith(parent.split(",")[0])  # the subject keeps its words


def test_reduced_terms_feed_the_negative_but_weather_is_reduced_in_place() -> None:
    assert reduced_terms("less red") == ("red",)
    assert reduced_terms("make it less blue") == ("blue",)
    assert reduced_terms("not so blue") == ("blue",)
    assert reduced_terms("less snow") == ()
    assert reduced_terms("add a moon") == ()


def test_less_weather_where_there_is_none_adds_none() -> None:
    assert apply_edit(FOX, "less snow") == FOX
    assert apply_edit(FOX, "a little less snow") == FOX


def test_snowy_after_a_blizzard_adds_no_second_snow_term() -> None:
    snowier = apply_edit(CABIN, "make it snowier")
    misspelt = apply_edit(snowier, "make it snowyer")
    assert "blizzard, very heavy snowfall" in misspelt
    again = apply_edit(misspelt, "make it snowy")
    assert again == misspelt
    assert apply_edit(snowier, "make it snowy") == snowier


def test_add_to_an_object_goes_next_to_it_and_removing_it_leaves_no_fragments() -> None:
    fox = "a red fox in the snow, detailed environment"
    hat = apply_edit(fox, "add a hat to the fox")
    assert hat == "a red fox wearing a hat in the snow, detailed environment"
    gone = apply_edit(hat, "remove the fox")
    assert "fox" not in gone
    assert not re.match(r"^(?:with|to)\b", gone) and " to," not in gone


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("replace the whale with a shark", "a shark underwater, simple background"),
        ("swap the whale for a dolphin", "a dolphin underwater, simple background"),
        ("turn the whale into a submarine", "a submarine underwater, simple background"),
    ],
)
def test_replace_swaps_the_thing_in_place(instruction: str, expected: str) -> None:
    assert apply_edit("a blue whale underwater, simple background", instruction) == expected


def test_a_thing_made_bigger_is_drawn_larger_not_named_bigger() -> None:
    bigger = apply_edit(FOX, "make the fox bigger")
    assert bigger.startswith("a large red fox sitting on a mossy rock, close-up of the fox")
    assert "bigger" not in bigger
    assert apply_edit(bigger, "make the fox bigger").startswith("a huge red fox")
    # smaller after bigger steps back to the original, with no contradicting framing left
    assert apply_edit(bigger, "make the fox smaller") == FOX
    smaller = apply_edit(FOX, "make the fox smaller")
    assert smaller.startswith("a small red fox") and "wide shot" in smaller
    assert apply_edit(FOX, "make the dragon bigger").startswith(
        "a red fox sitting on a mossy rock, a large dragon"
    )


def test_more_of_a_colour_is_a_colour_cast() -> None:
    for instruction in ("more blue", "make it bluer", "bluer", "a bit more blue tones"):
        edited = apply_edit(FOX, instruction)
        assert "dominant blue tones" in edited and "bluer" not in edited and "more blue" not in edited
    twice = apply_edit(apply_edit(FOX, "bluer"), "bluer")
    assert "strongly dominant blue tones" in twice
    assert "blue" not in apply_edit(apply_edit(FOX, "bluer"), "less blue")


@pytest.mark.parametrize(
    ("instruction", "framing", "gone"),
    [
        ("zoom out", "wide shot, seen from farther away", "close-up"),
        ("zoom out a bit", "wide shot", "close-up"),
        ("zoom in", "close-up", "wide shot"),
        ("zoom in on the fox", "close-up of the fox", "wide shot"),
        ("pull back", "wide shot", "close-up"),
    ],
)
def test_zooming_is_framing_never_the_words(instruction: str, framing: str, gone: str) -> None:
    start = "a red fox in the snow, close-up" if gone == "close-up" else "a red fox in the snow, wide shot"
    edited = apply_edit(start, instruction)
    assert framing in edited and "zoom" not in edited and "pull" not in edited
    assert gone not in edited.replace(framing, "")  # the opposite framing goes


@pytest.mark.parametrize(
    ("instruction", "wanted"),
    [
        ("make the fox hot pink", "a hot pink fox"),
        ("make the fox light blue", "a light blue fox"),
        ("make it hot pink", "dominant hot pink tones"),
        ("in pink", "dominant pink tones"),
        ("all in red", "dominant red tones"),
    ],
)
def test_a_shade_is_part_of_the_colour_not_of_the_thing(instruction: str, wanted: str) -> None:
    edited = apply_edit(FOX, instruction)
    assert wanted in edited and "fox hot" not in edited and "in pink" not in edited, edited


@pytest.mark.parametrize(
    ("prompt", "instruction", "expected"),
    [
        (
            "a portrait of a woman, 85mm lens, highly detailed",
            "a 50mm lens shot",
            "a portrait of a woman, 50mm lens",
        ),
        (
            "a portrait of a woman, 85mm lens, highly detailed",
            "shot on 24 mm",
            "a portrait of a woman, 24mm lens",
        ),
        ("a portrait of a woman, highly detailed", "use a 35mm lens", "a portrait of a woman, 35mm lens"),
    ],
)
def test_a_lens_replaces_the_lens(prompt: str, instruction: str, expected: str) -> None:
    edited = apply_edit(prompt, instruction)
    assert edited.startswith(expected) and len(re.findall(r"\d+mm", edited)) == 1, edited


@pytest.mark.parametrize(
    ("prompt", "instruction", "expected"),
    [
        (
            "a garden path through a forest at dawn, soft light",
            "remove the path",
            "a forest at dawn, soft light",
        ),
        ("a lion resting on a rock, detailed", "without the lion", "a rock, detailed"),
        ("a red fox sitting on a mossy rock, detailed", "remove the fox", "a mossy rock, detailed"),
    ],
)
def test_removing_the_subject_leaves_the_scene_it_was_in(
    prompt: str, instruction: str, expected: str
) -> None:
    assert apply_edit(prompt, instruction) == expected


ROOM = "a woman reading at a table with a bowl of fruit, soft window light, highly detailed"


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        (
            "make the table wooden",
            "a woman reading at a wooden table with a bowl of fruit, soft window light",
        ),
        ("give the woman a hat", "a woman wearing a hat reading at a table"),
        (
            "give her glasses",
            "a woman reading at a table with a bowl of fruit, wearing glasses, soft window light",
        ),
        (
            "move the bowl to the right",
            "a bowl of fruit, the bowl on the right of the frame, soft window light",
        ),
        ("make it autumn colors", "soft window light, autumn color palette, highly detailed"),
    ],
)
def test_a_change_to_one_thing_is_said_about_that_thing(instruction: str, expected: str) -> None:
    edited = apply_edit(ROOM, instruction)
    assert expected in edited, edited
    verb = instruction.split()[0]
    assert verb not in edited.split() and "in autumn" not in edited


@pytest.mark.parametrize(
    "instruction",
    [
        "make the cabin and the trees bigger",
        "the cabin and the trees should be bigger",
        "the trees and the cabin need to be bigger",
    ],
)
def test_one_size_change_said_of_two_things_changes_both(instruction: str) -> None:
    edited = apply_edit(CABIN, instruction)
    assert "large cozy cabin" in edited and "large trees" in edited, edited
    assert "and the trees" not in edited and "bigger" not in edited and "a large trees" not in edited


def test_one_colour_said_of_two_things_colours_both() -> None:
    edited = apply_edit(CABIN, "make the cabin and the trees red")
    assert "red cabin" in edited and "red trees" in edited and "and the trees" not in edited, edited


@pytest.mark.parametrize("instruction", ["zoom in on the cabin", "make the cabin bigger", "zoom in"])
def test_a_close_up_drops_the_wide_view_it_contradicts(instruction: str) -> None:
    assert "wide establishing view" in CABIN
    edited = apply_edit(CABIN, instruction)
    assert "close-up" in edited and "wide establishing view" not in edited, edited
    assert "wide shot" in apply_edit(edited, "zoom out")


def test_a_new_colour_cast_replaces_the_old_one() -> None:
    blue = apply_edit(FOX, "make it blue")
    green = apply_edit(blue, "ok make it green")
    assert "dominant green tones" in green and "blue" not in green, green
    assert "strongly" not in apply_edit(apply_edit(apply_edit(FOX, "bluer"), "bluer"), "make it red")


def test_a_photographic_style_drops_the_words_that_say_it_is_drawn() -> None:
    real = apply_edit("a cartoon dragon on a hill, highly detailed", "more realistic")
    assert real.startswith("a dragon on a hill") and "professional photograph" in real, real


@pytest.mark.parametrize(
    ("prompt", "instruction", "expected"),
    [
        (
            "a cartoon dragon on a hill, highly detailed",
            "less cartoony",
            "a dragon on a hill, highly detailed",
        ),
        ("a cute puppy on a rug, highly detailed", "less cute", "a puppy on a rug, highly detailed"),
        ("a scary clown in a scarf, highly detailed", "less scary", "a clown in a scarf, highly detailed"),
    ],
)
def test_less_of_a_look_takes_it_out_of_the_subject(prompt: str, instruction: str, expected: str) -> None:
    assert apply_edit(prompt, instruction) == expected


@pytest.mark.parametrize(
    "instruction",
    ['change the name to "Bean Here"', "rename it to 'Bean Here'", "the text should say 'Bean Here'"],
)
def test_new_words_replace_the_words_in_the_picture(instruction: str) -> None:
    logo = "a logo for a coffee shop called “Bean There”, flat vector"
    assert apply_edit(logo, instruction) == "a logo for a coffee shop called “Bean Here”, flat vector"
    assert "“Open” written on the sign" in apply_edit(CABIN, "make the sign say 'Open'")


@pytest.mark.parametrize(
    ("instruction", "wanted"),
    [
        ("put him on a beach instead", "my dog on a beach"),
        ("change the background to mountains", "mountains"),
    ],
)
def test_a_place_after_remove_the_background_replaces_the_plain_white(instruction: str, wanted: str) -> None:
    alone = "my dog, isolated on a plain white background, highly detailed"
    edited = apply_edit(alone, instruction)
    assert wanted in edited and "white background" not in edited, edited
    assert "white background" in apply_edit(alone, "add a hat")  # no place: still on white


def test_a_tag_prompts_new_words_go_with_its_subject_tag_not_the_quality_tags() -> None:
    tags = "masterpiece, best quality, 1girl, silver hair"
    assert (
        apply_edit(tags, "with a red cloak")
        == "masterpiece, best quality, 1girl with a red cloak, silver hair"
    )
    assert apply_edit(tags, "make it foggy").startswith("masterpiece, best quality, 1girl, fog")


MIRA = "Mira and her fox at the beach at sunset, anime style, cel shading"


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("now put her in a rainy city at night", "Mira and her fox in a rainy city at night, anime style"),
        ("put them in a forest", "Mira and her fox in a forest at sunset, anime style"),
        ("put it at night", "Mira and her fox at the beach at night, anime style"),
    ],
)
def test_putting_the_subject_somewhere_replaces_where_it_was(instruction: str, expected: str) -> None:
    edited = apply_edit(MIRA, instruction)
    assert edited.startswith(expected) and "beach" not in edited.replace(expected, ""), edited


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("keep the same character but make her wave", "Mira and her fox waving at the beach at sunset"),
        ("have them sleep", "Mira and her fox sleeping at the beach"),
    ],
)
def test_an_action_said_of_a_pronoun_is_the_subjects(instruction: str, expected: str) -> None:
    edited = apply_edit(MIRA, instruction)
    assert edited.startswith(expected) and "her wave" not in edited, edited


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a kid watching a cartoon on tv, detailed", "a kid watching a cartoon on tv"),
        ("an animated street market, detailed", "a street market"),
    ],
)
def test_a_photo_style_drops_drawn_looks_but_keeps_things_named(prompt: str, expected: str) -> None:
    assert apply_edit(prompt, "make it photorealistic").startswith(expected)
