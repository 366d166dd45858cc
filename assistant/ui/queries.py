"""Read-only queries the pages need that `Repository` does not offer (yet).

Each one reads through the repository's own session (`repo.db.read()`), so it sees the same
database and never writes. They belong in `storage.repository` eventually; keeping them in one
small module makes that move a matter of cutting and pasting.
"""

from __future__ import annotations

import re

from sqlalchemy import and_, exists, or_, select

from storage.models import Conversation, Message
from storage.repository import Repository

#: how many words of a search count (each must match); more only slows the query down
MAX_SEARCH_WORDS = 8


def search_words(text: str) -> list[str]:
    """The words of a search box, lower-cased, without duplicates, in the order typed."""
    words: list[str] = []
    for word in re.findall(r"\w+", text.lower()):
        if word not in words:
            words.append(word)
    return words[:MAX_SEARCH_WORDS]


def find_conversations(repo: Repository, query: str = "", limit: int = 100) -> list[Conversation]:
    """Conversations, most recently active first, up to `limit`.

    With a query, only those where every word appears in the title or in one of the
    conversation's messages (what the user typed and what the assistant answered), ignoring
    case. An empty or punctuation-only query lists them all.
    """
    statement = select(Conversation)
    conditions = []
    for word in search_words(query):
        in_messages = exists().where(
            Message.conversation_id == Conversation.id,
            Message.content.icontains(word, autoescape=True),
        )
        conditions.append(or_(Conversation.title.icontains(word, autoescape=True), in_messages))
    if conditions:
        statement = statement.where(and_(*conditions))
    statement = statement.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit)
    with repo.db.read() as session:
        return list(session.scalars(statement))
