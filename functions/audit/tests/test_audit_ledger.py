"""The ledger's document format (ledger.py), on an in-memory stand-in for the store.

tests/test_audit_rollups.py runs the same code on a real FerretDB."""
import datetime as dt

from audit_function import ledger, rollup

T0 = dt.datetime(2026, 1, 2, 12, 0, 30, tzinfo=dt.UTC)


class MemoryStore:
    """The few AuditStore calls the ledger makes, over dicts."""

    def __init__(self):
        self.docs: dict[str, dict] = {}

    def kpi(self, name):
        assert name == ledger.COLLECTION
        return self.docs

    def get(self, col, _id):
        return col.get(_id)

    def insert(self, col, doc):
        return col.setdefault(doc["_id"], doc) is doc

    def update(self, col, _id, update):
        (field, value), = update["$push"].items()
        col[_id][field].append(value)

    def delete_where(self, col, query):
        (field, cond), = query.items()
        gone = [k for k, d in col.items() if field in d and d[field] < cond["$lt"]]
        for k in gone:
            del col[k]
        return len(gone)


def test_generations_of_a_minute():
    store = MemoryStore()
    book = ledger.Ledger(store)
    a, b, late = (rollup.new_batch_id(T0) for _ in range(3))
    minute = rollup.batch_minute(a)
    lid = ledger.ledger_id(a)
    assert lid == f"m|{minute}" and not book.names(a)
    assert book.record(minute, sorted([a, b])) == (lid, 0, {a, b})
    assert book.record(minute, [a]) == (lid, 0, {a, b})  # a rerun finds its generation
    assert book.record(minute, [late]) == (lid, 1, {late})  # a part recovered later
    doc = book.get(lid)
    assert ledger.generations(doc) == [sorted([a, b]), [late]]
    assert ledger.generation_of(doc, late) == 1 and ledger.generation_of(None, a) is None
    assert ledger.generation_rollup_id(lid, 1) == f"{lid}|1"
    assert book.names(a) and book.names(late)
    assert doc == {"_id": lid, "t": minute, "gens": [{"ids": sorted([a, b])}, {"ids": [late]}]}


def test_rebuild_mark_survives_pruning():
    store = MemoryStore()
    book = ledger.Ledger(store)
    assert book.rebuilt_at() is None
    book.mark_rebuilt(T0.timestamp())
    book.record(600, ["0000000600000-000000000000"])
    assert book.prune(T0.timestamp()) == 1
    assert book.rebuilt_at() == T0.timestamp() and list(store.docs) == [ledger.REBUILT_ID]
