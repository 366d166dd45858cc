"""Lineage: "where did #7 come from" and "what did I make from #3" must be right and cheap.

The tree used throughout (ids in creation order):

    1 generate (root)
    ├── 2 edit ── 3 edit ─┬─ 4 edit ── 5 edit          (the five-deep edit chain 1→5)
    │                     └─ 6 variation ── 7 edit     (branch off #3)
    └── 8 variation                                    (branch off the root)
    9 generate (unrelated, same conversation)
"""

from __future__ import annotations

import pytest

from storage.models import Image
from storage.repository import NotFound, Repository
from tests.storage.helpers import add_generated, ids, statements


@pytest.fixture
def tree(repo: Repository) -> dict[str, Image]:
    conversation = repo.create_conversation("lighthouse")
    images: dict[str, Image] = {}
    images["root"] = add_generated(repo, conversation.id, "a lighthouse at dusk", index=1)
    parent = images["root"]
    for step in range(1, 5):
        parent = add_generated(
            repo, conversation.id, f"lighthouse edit {step}", parent_id=parent.id, index=1 + step
        )
        images[f"e{step}"] = parent
    images["b1"] = add_generated(
        repo, conversation.id, "variation", parent_id=images["e2"].id, operation="variation", index=6
    )
    images["b2"] = add_generated(repo, conversation.id, "branch edit", parent_id=images["b1"].id, index=7)
    images["v1"] = add_generated(
        repo, conversation.id, "root variation", parent_id=images["root"].id, operation="variation", index=8
    )
    images["other"] = add_generated(repo, conversation.id, "an unrelated cat", index=9)
    # A second tree in another conversation must never leak into this one.
    elsewhere = repo.create_conversation("elsewhere")
    stranger = add_generated(repo, elsewhere.id, "stranger", index=10)
    add_generated(repo, elsewhere.id, "stranger edit", parent_id=stranger.id, index=11)
    return images


def test_numbers_and_parents_match_creation_order(tree: dict[str, Image]) -> None:
    chain = [tree[k] for k in ("root", "e1", "e2", "e3", "e4")]
    assert [image.number for image in chain] == [1, 2, 3, 4, 5]
    assert [image.parent_id for image in chain] == [None, *ids(chain[:-1])]
    assert tree["b1"].parent_id == tree["e2"].id and tree["b1"].operation == "variation"


def test_ancestors_root_first_in_one_query(repo: Repository, tree: dict[str, Image]) -> None:
    with statements(repo.db.engine) as sql:
        ancestors = repo.ancestors(tree["e4"].id)
    assert ids(ancestors) == ids([tree["root"], tree["e1"], tree["e2"], tree["e3"]])
    assert len(sql) == 1, sql

    assert ids(repo.ancestors(tree["b2"].id)) == ids([tree["root"], tree["e1"], tree["e2"], tree["b1"]])
    assert repo.ancestors(tree["root"].id) == []


def test_descendants_breadth_first_in_one_query(repo: Repository, tree: dict[str, Image]) -> None:
    with statements(repo.db.engine) as sql:
        below_e2 = repo.descendants(tree["e2"].id)
    assert len(sql) == 1, sql
    # depth 1: e3, b1 (by id) · depth 2: e4, b2
    assert ids(below_e2) == ids([tree["e3"], tree["b1"], tree["e4"], tree["b2"]])

    below_root = repo.descendants(tree["root"].id)
    expected = ["e1", "v1", "e2", "e3", "b1", "e4", "b2"]
    assert ids(below_root) == ids([tree[k] for k in expected])
    assert repo.descendants(tree["e4"].id) == []
    assert tree["other"].id not in ids(below_root)


def test_lineage_tree_from_any_node_in_one_query(repo: Repository, tree: dict[str, Image]) -> None:
    expected = [("root", 0), ("e1", 1), ("v1", 1), ("e2", 2), ("e3", 3), ("b1", 3), ("e4", 4), ("b2", 4)]
    for start in ("b2", "e4", "root", "v1"):
        with statements(repo.db.engine) as sql:
            nodes = repo.lineage_tree(tree[start].id)
        assert len(sql) == 1, (start, sql)
        assert [(node.image.id, node.depth) for node in nodes] == [(tree[k].id, d) for k, d in expected]
        # every node's parent comes earlier in the list, so a UI can build it top-down
        seen: set[int] = set()
        for node in nodes:
            assert node.image.parent_id is None or node.image.parent_id in seen
            seen.add(node.image.id)


def test_lone_image_is_its_own_tree(repo: Repository, tree: dict[str, Image]) -> None:
    nodes = repo.lineage_tree(tree["other"].id)
    assert [(node.image.id, node.depth) for node in nodes] == [(tree["other"].id, 0)]


@pytest.mark.parametrize("call", ["ancestors", "descendants", "lineage_tree"])
def test_unknown_image_is_not_found(repo: Repository, tree: dict[str, Image], call: str) -> None:
    with statements(repo.db.engine) as sql, pytest.raises(NotFound, match="no image"):
        getattr(repo, call)(999_999)
    assert len(sql) == 1


def test_generation_inputs_record_the_edit_source(repo: Repository, tree: dict[str, Image]) -> None:
    generation, inputs = repo.generation(tree["e3"].generation_id or -1)
    assert generation.operation == "edit"
    assert [(i.image_id, i.role) for i in inputs] == [(tree["e2"].id, "init")]


def test_get_image_by_number(repo: Repository, tree: dict[str, Image]) -> None:
    conversation_id = tree["root"].conversation_id
    assert repo.get_image_by_number(conversation_id, 4).id == tree["e3"].id
    with pytest.raises(NotFound, match="#42"):
        repo.get_image_by_number(conversation_id, 42)
