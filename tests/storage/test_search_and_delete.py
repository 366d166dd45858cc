"""Finding images by what people remember (their words, the prompt, what the model said it drew),
the gallery's filters, finding conversations by the words of their titles and messages, and
deleting conversations without losing files another row still uses."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import text

from storage.archive import ArchiveError, export_conversation, import_conversation
from storage.models import Conversation, Image, utcnow
from storage.repository import (
    MAX_SEARCH_WORDS,
    ImageFilter,
    NewGeneration,
    NewImage,
    NotFound,
    Repository,
    search_words,
)
from tests.storage.helpers import add_generated, files_on_disk, ids, statements, tiny_image


@pytest.fixture
def library(repo: Repository) -> dict[str, Image]:
    coast = repo.create_conversation("coast")
    desert = repo.create_conversation("desert")
    images = {
        "lighthouse": add_generated(repo, coast.id, "a lighthouse on a cliff, stormy sea", index=1),
        "fog": add_generated(
            repo,
            coast.id,
            "a lighthouse on a cliff, thick fog",
            instruction="make it foggier please",
            index=2,
        ),
        "revised": add_generated(
            repo,
            coast.id,
            "boat",
            revised_prompt="A cinematic wooden sailboat at golden hour",
            index=3,
        ),
        "camel": add_generated(repo, desert.id, "a camel crossing dunes at noon", index=4),
    }
    return images


def _fts_rowids(repo: Repository, match: str) -> list[int]:
    with repo.db.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT rowid FROM images_fts WHERE images_fts MATCH :m ORDER BY rowid"), {"m": match}
        )
        return [row[0] for row in rows]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("lighthouse", ["fog", "lighthouse"]),  # prompt words, newest first
        ("LIGHTHOUSE cliff", ["fog", "lighthouse"]),  # case-insensitive, all words
        ("foggier", ["fog"]),  # the user's instruction
        ("cinematic sailboat", ["revised"]),  # what the backend says it drew
        ("lightho", ["fog", "lighthouse"]),  # a word being typed
        ("lighthouses", ["fog", "lighthouse"]),  # plural finds singular (porter stemming)
        ("lighthouse camel", []),
        ("camel", ["camel"]),
    ],
)
def test_search_finds_by_prompt_instruction_and_revised_prompt(
    repo: Repository, library: dict[str, Image], query: str, expected: list[str]
) -> None:
    assert ids(repo.search_images(query)) == ids([library[k] for k in expected])


@pytest.mark.parametrize(
    "query",
    ['"unbalanced', "NOT lighthouse", "light*", "(lighthouse OR", "lighthouse)", "NEAR(a b)",
     "prompt:camel", "AND", '"', "***", "''", "", "   ", "a OR b AND NOT c",
     "{prompt instruction}: camel", "💡 lighthouse"],
)  # fmt: skip
def test_fts_syntax_in_user_text_never_errors(
    repo: Repository, library: dict[str, Image], query: str
) -> None:
    assert isinstance(repo.search_images(query), list)


@pytest.mark.parametrize("query", ["^camel", "camel*", "camel\x00", "(camel)", "camel:", "camel-"])
def test_operator_characters_are_ignored_around_words(
    repo: Repository, library: dict[str, Image], query: str
) -> None:
    assert ids(repo.search_images(query)) == [library["camel"].id]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("camel OR foggier", ["camel", "fog"]),  # either
        ("camel OR", ["camel"]),
        ("cliff stormy OR dunes", ["camel", "lighthouse"]),  # (cliff and stormy) or dunes
        ("lighthouse -fog", ["lighthouse"]),  # leave out
        ("-lighthouse", ["camel", "revised"]),
        ("#2", ["fog"]),  # the image's number in its conversation
        ("#1", ["camel", "lighthouse"]),
        ("#1 camel", ["camel"]),
        ("#1 -camel", ["lighthouse"]),
    ],
)
def test_search_syntax_or_minus_and_image_numbers(
    repo: Repository, library: dict[str, Image], query: str, expected: list[str]
) -> None:
    assert ids(repo.search_images(query)) == ids([library[k] for k in expected])


def test_emoji_are_found_though_the_index_has_no_words_for_them(repo: Repository) -> None:
    zoo = repo.create_conversation("zoo")
    fox = add_generated(repo, zoo.id, "a red fox in the snow", instruction="a 🦊 in the ❄️", index=1)
    cat = add_generated(repo, zoo.id, "a cat 🐱 on a sofa", index=2)
    plain = add_generated(repo, zoo.id, "a fox den", index=3)
    assert ids(repo.search_images("🦊")) == [fox.id]
    assert ids(repo.search_images("❄️ fox")) == [fox.id]  # a symbol and a word, both required
    assert ids(repo.search_images("🦊 OR 🐱")) == [cat.id, fox.id]
    assert ids(repo.search_images("fox -🦊")) == [plain.id]  # no instruction at all still counts
    assert ids(repo.search_images("🐢")) == []


def test_quoted_phrase_is_treated_as_words(repo: Repository, library: dict[str, Image]) -> None:
    assert ids(repo.search_images('"thick fog"')) == [library["fog"].id]


def test_search_within_one_conversation(repo: Repository, library: dict[str, Image]) -> None:
    coast = library["lighthouse"].conversation_id
    found = repo.list_images(ImageFilter(conversation_id=coast, query="a"))
    assert {image.conversation_id for image in found} == {coast}


def test_gallery_filters_and_pages(repo: Repository, library: dict[str, Image]) -> None:
    everything = repo.list_images()
    assert ids(everything) == sorted(ids(library.values()), reverse=True)  # newest first
    assert ids(repo.list_images(limit=2)) + ids(repo.list_images(limit=2, offset=2)) == ids(everything)
    assert ids(repo.list_images(ImageFilter(backend="offline"))) == ids(everything)
    assert repo.list_images(ImageFilter(backend="openai")) == []
    assert repo.list_images(ImageFilter(operation="edit")) == []
    desert = library["camel"].conversation_id
    assert ids(repo.list_images(ImageFilter(conversation_id=desert))) == [library["camel"].id]
    now = utcnow()
    assert repo.list_images(ImageFilter(since=now + timedelta(minutes=1))) == []
    assert len(repo.list_images(ImageFilter(since=now - timedelta(hours=1), until=now + timedelta(1)))) == 4
    assert repo.backends_and_operations() == (["offline"], ["generate"])


def test_deleting_the_original_of_an_imported_copy_leaves_the_copy_whole(
    repo: Repository, library: dict[str, Image], tmp_path: Path
) -> None:
    coast = library["lighthouse"].conversation_id
    zip_path = tmp_path / "coast.zip"
    export_conversation(repo, coast, zip_path)
    repo.rename_conversation(coast, "coast, renamed")  # else the zip is this conversation again
    copy = import_conversation(repo, zip_path)
    originals = [library[name] for name in ("lighthouse", "fog", "revised")]
    copy_files = {repo.image_path(i) for i in repo.conversation_images(copy)}

    # the copy has files of its own (their PNG chunks name the copy's ids), so the original's go
    assert repo.delete_conversation(coast) == 3
    assert not any(repo.image_path(i).exists() for i in originals)
    assert all(path.exists() for path in copy_files)
    copy_images = repo.conversation_images(copy)
    assert all(repo.load_image(image).size == (8, 8) for image in copy_images)
    assert repo.check_integrity().ok
    # search finds the copy, never the deleted originals
    assert ids(repo.search_images("lighthouse")) == ids(sorted(copy_images[:2], key=lambda i: -i.id))
    with pytest.raises(NotFound):
        repo.get_conversation(coast)
    with pytest.raises(NotFound):
        repo.get_image(library["lighthouse"].id)

    assert repo.delete_conversation(copy) == 3  # now nothing else uses them
    remaining = files_on_disk(repo.files.root)
    assert set(remaining) == {str(repo.image_path(library["camel"]).relative_to(repo.files.root))}
    assert repo.search_images("lighthouse") == []
    assert _fts_rowids(repo, "lighthouse") == []  # the index itself forgot them (triggers ran)
    assert repo.check_integrity().ok


def test_ids_of_deleted_rows_are_never_reused_and_old_words_never_match(
    repo: Repository, library: dict[str, Image]
) -> None:
    """Plain SQLite gives the next row max(id) + 1, so deleting the newest conversation and
    making another reused its ids: an old link or `atelier show ID` showed the wrong thing."""
    desert = repo.create_conversation("desert")  # the newest conversation, message and image
    message = repo.add_message(desert.id, "user", "a camel in the desert")
    camel = add_generated(repo, desert.id, "a camel in zanzibar", index=8)
    repo.delete_conversation(desert.id)
    fresh = repo.create_conversation("again")
    assert fresh.id > desert.id
    assert repo.add_message(fresh.id, "user", "a penguin").id > message.id
    reborn = add_generated(repo, fresh.id, "a penguin on ice", index=9)
    assert reborn.id > camel.id
    assert ids(repo.search_images("zanzibar")) == []
    assert _fts_rowids(repo, "zanzibar") == []
    assert ids(repo.search_images("penguin")) == [reborn.id]
    with pytest.raises(NotFound):
        repo.get_image(camel.id)
    # the high-water mark is in the database: another process numbers above it too
    repo.delete_conversation(fresh.id)
    reopened = Repository.open(str(repo.db.engine.url), repo.files.root)
    assert reopened.create_conversation("third").id > fresh.id
    reopened.db.dispose()


def test_deleting_a_parent_conversation_keeps_derived_images_elsewhere(
    repo: Repository, library: dict[str, Image]
) -> None:
    other = repo.create_conversation("remix")
    child = add_generated(repo, other.id, "remix of the camel", parent_id=library["camel"].id, index=7)
    repo.delete_conversation(library["camel"].conversation_id)
    survivor = repo.get_image(child.id)
    assert survivor.parent_id is None
    assert [n.image.id for n in repo.lineage_tree(child.id)] == [child.id]
    assert repo.check_integrity().ok


def test_delete_unknown_conversation(repo: Repository) -> None:
    with pytest.raises(NotFound, match="no conversation 77"):
        repo.delete_conversation(77)


@pytest.mark.parametrize("huge", [2**63, 2**70, -(2**63) - 1])
def test_ids_no_row_can_have_are_not_found_not_a_crash(repo: Repository, huge: int, tmp_path: Path) -> None:
    """A pasted 20-digit number names nothing; SQLite cannot even bind it, so it must not be asked."""
    conversation = repo.create_conversation("kept")
    image = add_generated(repo, conversation.id, "a lighthouse")
    for lookup in (
        lambda: repo.get_image(huge),
        lambda: repo.get_conversation(huge),
        lambda: repo.get_image_by_number(conversation.id, huge),
        lambda: repo.get_image_by_number(huge, 1),
        lambda: repo.lineage_tree(huge),
        lambda: repo.ancestors(huge),
        lambda: repo.generation(huge),
        lambda: repo.rename_conversation(huge, "x"),
        lambda: repo.delete_conversation(huge),
        lambda: repo.add_message(huge, "user", "hello"),
    ):
        with pytest.raises(NotFound, match="There is no"):
            lookup()
    with pytest.raises(ArchiveError, match="no conversation"):
        export_conversation(repo, huge, tmp_path / "out.zip")
    assert repo.messages(huge) == []
    assert repo.conversation_images(huge) == []
    assert repo.generations(huge) == []
    assert repo.list_images(ImageFilter(conversation_id=huge)) == []
    assert [i.id for i in repo.conversation_images(conversation.id)] == [image.id]
    assert repo.check_integrity().ok


def _inpaint_with_mask(repo: Repository, conversation_id: int, index: int) -> Image:
    """An inpaint whose mask is the same all-white 8x8 PNG every time: one file, many rows."""
    mask = PILImage.new("L", (8, 8), 255)
    new_image = NewImage(
        image=tiny_image(index),
        operation="inpaint",
        backend="offline",
        model="tiny",
        prompt="a boat",
        mask=mask,
    )
    record = repo.record_turn(
        conversation_id,
        reply="boat added",
        generations=[NewGeneration(operation="inpaint", backend="offline", model="tiny", images=[new_image])],
    )
    return record.images[0]


def test_delete_keeps_a_file_another_conversations_row_still_uses(repo: Repository) -> None:
    first = repo.create_conversation("first")
    second = repo.create_conversation("second")
    mine = _inpaint_with_mask(repo, first.id, 1)
    theirs = _inpaint_with_mask(repo, second.id, 2)
    assert mine.mask_sha256 == theirs.mask_sha256 is not None
    mask_path = repo.files.path_for(theirs.mask_sha256)

    assert repo.delete_conversation(first.id) == 1  # its image; the shared mask stays
    assert mask_path.exists() and not repo.image_path(mine).exists()
    assert repo.load_mask(repo.get_image(theirs.id)) is not None
    assert repo.check_integrity().ok

    assert repo.delete_conversation(second.id) == 2  # now nothing else uses the mask
    assert not mask_path.exists()
    assert files_on_disk(repo.files.root) == {}


def test_delete_racing_a_save_of_the_same_file_never_loses_it(repo: Repository, tmp_path: Path) -> None:
    """A save that reuses the deleted conversation's file (same mask bytes) commits between the
    delete's commit and its unlink: the file must survive, since a row names it again.

    The save runs in another thread with a repository of its own (as another process would) and
    is started exactly at the moment the delete is about to unlink. The delete then holds the
    write lock, so the save waits for it and writes the file afresh; unlinking outside the lock
    would let the save find the file, commit, and then lose it.
    """
    doomed = repo.create_conversation("doomed")
    survivor = repo.create_conversation("survivor")
    _inpaint_with_mask(repo, doomed.id, 1)
    other = Repository.open(repo.db.url, repo.files.root)
    saved: list[Image] = []
    errors: list[BaseException] = []

    def concurrent_save() -> None:
        try:
            saved.append(_inpaint_with_mask(other, survivor.id, 2))
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    saver = threading.Thread(target=concurrent_save)
    real_delete = repo.files.delete

    def delete_after_a_concurrent_save(digest: str) -> None:
        if not saver.is_alive() and not saved:
            saver.start()
            saver.join(timeout=1.0)  # done at once unless the delete holds the write lock
        real_delete(digest)

    repo.files.delete = delete_after_a_concurrent_save  # type: ignore[method-assign]
    repo.delete_conversation(doomed.id)
    saver.join(timeout=30)
    assert not errors and len(saved) == 1
    mask_digest = saved[0].mask_sha256
    assert mask_digest is not None
    assert repo.files.path_for(mask_digest).exists()
    assert repo.load_mask(repo.get_image(saved[0].id)) is not None
    assert repo.check_integrity().ok
    other.db.dispose()


# ----- finding conversations (the sidebar's search, the history page's conversation filter) -----


@pytest.fixture
def trips(repo: Repository) -> list[int]:
    """Twelve conversations, "Trip 001" the oldest; "Trip 005" talked about a lighthouse at dawn
    and got an answer about its keeper; the newest, "Trip 012", about a harbour."""
    made: list[int] = []
    for n in range(1, 13):
        made.append(repo.create_conversation(f"Trip {n:03d}").id)
        if n == 5:  # said before the next one starts, so the order stays the creation order
            repo.add_message(made[-1], "user", "a lighthouse on a cliff at dawn")
            repo.add_message(made[-1], "assistant", "Here is the keeper's lamp.")
    repo.add_message(made[-1], "user", "a quiet harbour")
    return made


def _found(repo: Repository, query: str | None, limit: int = 1000, offset: int = 0) -> list[int]:
    return [c.id for c in repo.list_conversations(limit=limit, offset=offset, query=query)]


def test_list_conversations_matches_every_word_in_title_or_messages(
    repo: Repository, trips: list[int]
) -> None:
    newest_first = trips[::-1]
    assert _found(repo, None) == _found(repo, "") == newest_first
    assert [c.id for c in repo.list_conversations()] == newest_first  # the old call still works
    assert _found(repo, "", limit=3) == newest_first[:3]
    assert _found(repo, "trip 005") == [trips[4]]
    assert _found(repo, "IGHTHOUS") == [trips[4]]  # parts of words match too, in any case
    assert _found(repo, "lighthouse dawn") == [trips[4]]
    assert _found(repo, "keeper") == [trips[4]]  # what the assistant answered counts too
    assert _found(repo, "trip lighthouse keeper") == [trips[4]]  # title and messages together
    assert _found(repo, "lighthouse harbour") == []  # every word must match in the same conversation
    assert _found(repo, "  ,;  ") == _found(repo, "   ") == newest_first  # no words: all of them
    assert _found(repo, "a") == [trips[11], trips[4]]  # short words too: "a quiet…", "a lighthouse…"
    assert _found(repo, "trip 01") == [trips[11], trips[10], trips[9], trips[0]]  # "001" has "01"


def test_list_conversations_pages_with_offset(repo: Repository, trips: list[int]) -> None:
    pages = [_found(repo, None, limit=5, offset=offset) for offset in (0, 5, 10, 15)]
    assert pages[0] + pages[1] + pages[2] == trips[::-1] and pages[3] == []
    assert _found(repo, "trip", limit=2, offset=10) == [trips[1], trips[0]]


def test_list_conversations_orders_by_last_activity(repo: Repository, trips: list[int]) -> None:
    repo.add_message(trips[0], "user", "back to the first trip")
    assert _found(repo, None)[:2] == [trips[0], trips[11]]
    assert _found(repo, "trip")[0] == trips[0]


def test_percent_and_underscore_are_literal(repo: Repository) -> None:
    sale = repo.create_conversation("50% off_season").id
    offer = repo.create_conversation("offer 50").id
    snake = repo.create_conversation("snake_case names").id
    camel = repo.create_conversation("snakeXcase names").id
    repo.add_message(camel, "user", "100 percent of it")
    assert _found(repo, "50") == [offer, sale]
    assert _found(repo, "50% off_") == [sale]  # `_` would match the "e" of "offer" as a wildcard
    assert _found(repo, "snake_case") == [snake]
    assert _found(repo, "off_") == [sale]
    assert _found(repo, "%") == _found(repo, None)  # not a word: lists everything
    assert _found(repo, "100%") == [camel]  # `%` only separates words
    assert _found(repo, "e_c") == [snake]


def test_list_conversations_ignores_case_beyond_ascii(repo: Repository) -> None:
    portrait = repo.create_conversation("Élodie's portrait").id
    street = repo.create_conversation("city walk").id
    repo.add_message(street, "user", "an old ÜBER sign in a STRASSE")
    assert _found(repo, "élodie") == _found(repo, "ÉLODIE") == _found(repo, "Élodie") == [portrait]
    assert _found(repo, "über") == _found(repo, "Über") == [street]
    assert _found(repo, "straße") == [street]  # capitals of "ß" are "SS"


def test_search_words() -> None:
    assert search_words("Trip  TRIP, trip-005 «lighthouse»") == ["trip", "005", "lighthouse"]
    assert search_words("50% off_") == ["50", "off_"]
    assert search_words(" ,;%' ") == []
    assert len(search_words(" ".join(f"w{n}" for n in range(20)))) == MAX_SEARCH_WORDS


def test_a_conversation_search_is_one_statement(repo: Repository, trips: list[int]) -> None:
    with statements(repo.db.engine) as seen:
        assert _found(repo, "trip lighthouse a keeper") == [trips[4]]
    assert len(seen) == 1


def test_conversation_titles_by_id(repo: Repository, trips: list[int]) -> None:
    assert repo.conversation_titles([trips[4], trips[0], trips[4], 99_999]) == {
        trips[0]: "Trip 001",
        trips[4]: "Trip 005",
    }
    with statements(repo.db.engine) as seen:
        assert repo.conversation_titles([]) == {}
    assert seen == []


def test_conversation_titles_for_more_ids_than_one_statement_binds(repo: Repository) -> None:
    with repo.db.write() as session:  # 1,500 rows in one transaction: cheap
        session.add_all(Conversation(title=f"Day {n}") for n in range(1, 1501))
    all_ids = [c.id for c in repo.list_conversations(limit=2000)]
    assert len(all_ids) == 1500
    titles = repo.conversation_titles(all_ids)
    assert len(titles) == 1500 and titles[min(all_ids)] == "Day 1"
