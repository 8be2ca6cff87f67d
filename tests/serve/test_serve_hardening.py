"""Failures a real server process must survive, each failing before its fix: a delete racing a
step, overflowing outputs, damaged records, a full disk, planted files, oversized runs, weak
tokens, unbounded streams."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time

import numpy as np
import pytest
import torch

from conftest import AUTH, TOKEN, make_config, replay, serving
from seqstate.core.model import SequenceModel
from seqstate.core.saved import save_model
from seqstate.serve import ServeConfig, create_app
from seqstate.serve.command import exposure_warning
from seqstate.serve.engine import Engine, StepRequest, StepResult
from seqstate.serve.rules import Reject
from seqstate.serve.stores import SQLiteStore, Update
from seqstate.serve.stores.base import new_record

X = [0.3, -0.2, 0.9]


def run(coroutine):
    return asyncio.run(coroutine)


class PausingSQLiteStore(SQLiteStore):
    """A real SQLite handle that lets ``between`` run right after its read (a replica's
    interleaving, made deterministic)."""

    between = None

    def get_many(self, streams):
        records = super().get_many(streams)
        between, self.between = self.between, None
        if between is not None:
            between()
        return records


def step(stream: str, seq: int, value: float) -> StepRequest:
    return StepRequest(stream, seq, np.full((1, 3), value, np.float32), single=True, start=False)


def test_a_step_computed_before_a_delete_and_recreate_is_refused(model, tmp_path):
    path = tmp_path / "shared.sqlite"
    one, two = PausingSQLiteStore(path), SQLiteStore(path)  # two servers on one file
    replica1, replica2 = Engine(model, one, ttl_s=0), Engine(model, two, ttl_s=0)
    replica1.process([step("s", 1, 0.5)])

    def delete_and_recreate():
        assert two.delete("s")
        (fresh,) = replica2.process([step("s", 1, -3.0)])  # acknowledged: a new step 1
        assert isinstance(fresh, StepResult) and not fresh.replayed

    one.between = delete_and_recreate
    (stale,) = replica1.process([step("s", 2, 0.5)])  # computed from the OLD step 1
    assert isinstance(stale, Reject) and stale.code == "seq_race" and stale.expected_seq == 2
    (record,) = two.get_many(["s"])
    assert record.seq == 1  # the new step 1 survives
    (next_step,) = replica2.process([step("s", 2, 1.0)])
    expected = replay(model, [([-3.0] * 3, False), ([1.0] * 3, False)])[1]
    assert np.allclose(json.loads(next_step.output), expected, atol=1e-5)
    one.close()
    two.close()


@pytest.fixture(scope="module")
def overflowing_run_dir(tmp_path_factory):
    """A model whose normalisation turns a finite input into inf (std far below 1)."""
    torch.manual_seed(0)
    model = SequenceModel(input_size=3, output_size=2, cell="lstm", hidden_size=4)
    model.set_normalization([0.0, 0.0, 0.0], [1e-30, 1e-30, 1.0], [0.0, 0.0], [1.0, 1.0])
    path = tmp_path_factory.mktemp("overflow")
    save_model(model, path)
    return path


def test_an_output_or_state_that_overflows_is_refused_and_nothing_is_stored(overflowing_run_dir):
    async def main():
        async with serving(create_app(make_config(overflowing_run_dir))) as client:
            bad = await client.post("/v1/streams/n/steps", json={"seq": 1, "x": [1e10, -1e10, 0]})
            assert bad.status_code == 422 and bad.json()["code"] == "non_finite_output"
            assert (await client.get("/v1/streams/n")).status_code == 404
            batch = await client.post(
                "/v1/steps",
                json={"steps": [{"id": "n", "seq": 1, "x": [1e10, -1e10, 0]}, {"id": "ok", "seq": 1,
                      "x": [0.0, 0.0, 0.0]}]},
            )  # fmt: skip
            assert batch.status_code == 200
            first, second = batch.json()["results"]  # valid JSON: no NaN anywhere
            assert first["status"] == 422 and second["status"] == 200

    run(main())


@pytest.mark.parametrize(
    "damage",
    ["flip_state_byte", "seq_not_a_number", "wrong_model_state", "updated_in_the_future"],
)
def test_one_damaged_record_fails_only_its_own_stream(run_dir, model, tmp_path, damage):
    path = tmp_path / "s.sqlite"

    async def main():
        config = make_config(run_dir, store=f"sqlite:///{path}")
        async with serving(create_app(config)) as client:
            for stream in ("bad", "good"):
                r = await client.post(f"/v1/streams/{stream}/steps", json={"seq": 1, "x": X})
                assert r.status_code == 200
            db = sqlite3.connect(path)
            if damage == "flip_state_byte":
                (state,) = db.execute("SELECT state FROM streams WHERE id='bad'").fetchone()
                flipped = bytearray(state)
                flipped[-1] ^= 0x01  # a bit of the tensor data: decodes fine, wrong value
                db.execute("UPDATE streams SET state=? WHERE id='bad'", (bytes(flipped),))
            elif damage == "seq_not_a_number":
                db.execute("UPDATE streams SET seq='abc' WHERE id='bad'")
            else:  # well-formed records (valid checksums): another model's, or from the future
                from seqstate.core.state import LSTMState

                wide = LSTMState(torch.zeros(1, 1, 16), torch.zeros(1, 1, 16)).to_bytes()
                (state,) = db.execute("SELECT state FROM streams WHERE id='bad'").fetchone()
                future = damage == "updated_in_the_future"
                record = new_record(
                    "bad",
                    seq=1,
                    state=bytes(state) if future else wide,
                    output=b"[0]",
                    digest=b"",
                    updated=time.time() + (1e9 if future else 0.0),
                )
                db.execute(
                    "UPDATE streams SET seq=1, state=?, output=?, digest=?, updated=?, "
                    "generation=?, checksum=? WHERE id='bad'",
                    (record.state, record.output, record.digest, record.updated,
                     record.generation, record.checksum),
                )  # fmt: skip
            db.commit()
            db.close()
        # the server that wrote the records keeps them and would not read them back: the
        # damage is found by the server that reads the file next (a restart, another replica)
        async with serving(create_app(config)) as client:
            batch = await client.post(
                "/v1/steps",
                json={"steps": [{"id": "bad", "seq": 2, "x": X}, {"id": "good", "seq": 2, "x": X}]},
            )
            bad, good = batch.json()["results"]
            if damage == "updated_in_the_future":  # expired, not kept forever
                assert bad["status"] == 404 and bad["error"]["code"] == "stream_not_found"
            else:
                assert bad["status"] == 409 and bad["error"]["code"] == "state_incompatible"
            assert good["status"] == 200
            assert np.allclose(good["y"], replay(model, [(X, False), (X, False)])[1], atol=1e-5)
            restarted = await client.post(
                "/v1/streams/bad/steps", json={"seq": 2, "x": X, "start": True}
            )
            assert restarted.status_code == 200  # start=true overwrites the damaged record

    run(main())


def test_a_damaged_state_under_the_server_that_wrote_it_is_answered_from_its_copy(
    run_dir, model, tmp_path
):
    """The server keeps the records it committed: a byte flipped in the file under it does
    not reach an answer (the kept copy, recognised by its generation, is the one it wrote),
    and its next commit writes the whole row again, whose checksum then holds."""
    path = tmp_path / "s.sqlite"

    async def main():
        config = make_config(run_dir, store=f"sqlite:///{path}")
        async with serving(create_app(config)) as client:
            r = await client.post("/v1/streams/a/steps", json={"seq": 1, "x": X})
            assert r.status_code == 200
            db = sqlite3.connect(path)
            (state,) = db.execute("SELECT state FROM streams WHERE id='a'").fetchone()
            flipped = bytearray(state)
            flipped[-1] ^= 0x01
            db.execute("UPDATE streams SET state=? WHERE id='a'", (bytes(flipped),))
            db.commit()
            db.close()
            r = await client.post("/v1/streams/a/steps", json={"seq": 2, "x": X})
            assert r.status_code == 200
            assert np.allclose(r.json()["y"], replay(model, [(X, False), (X, False)])[1], atol=1e-5)
        reader = SQLiteStore(path, known_records=0)
        (record,) = reader.get_many(["a"])
        reader.close()
        assert record is not None and record.seq == 2 and record.intact("a")

    run(main())


def test_disk_full_is_a_507_and_healthz_says_the_store_cannot_write(run_dir, tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")

    async def main():
        async with serving(create_app(make_config(run_dir), store=store)) as client:
            assert (await client.post("/v1/streams/a/steps", json={"seq": 1, "x": X})).is_success
            pages = store._db.execute("PRAGMA page_count").fetchone()[0]
            store._db.execute(f"PRAGMA max_page_count={pages}")
            streams = [f"s{i}" for i in range(300)]
            full = await client.post(
                "/v1/steps", json={"steps": [{"id": s, "seq": 1, "x": X} for s in streams]}
            )
            codes = {item["error"]["code"] for item in full.json()["results"] if "error" in item}
            assert codes == {"store_full"}
            health = await client.get("/healthz")
            assert health.status_code == 503 and health.json()["code"] == "store_cannot_write"
            assert "full" in health.json()["message"]
            store._db.execute("PRAGMA max_page_count=1073741823")
            assert (await client.get("/healthz")).status_code == 200

    run(main())


def test_a_streams_file_planted_in_the_run_dir_is_not_used(run_dir, tmp_path, monkeypatch):
    copied = tmp_path / "downloaded-run"
    shutil.copytree(run_dir, copied)
    planted = SQLiteStore(copied / "streams.sqlite")
    record = new_record("s", seq=5, state=b"x", output=b"[1,2]", digest=b"", updated=1e12)
    planted.commit([Update("s", None, record)])
    planted.close()
    monkeypatch.setenv("SEQSTATE_STATE_DIR", str(tmp_path / "state"))
    config = ServeConfig(copied, token=TOKEN)
    assert str(copied.resolve()) not in config.store_url
    assert config.store_url.startswith(f"sqlite:///{tmp_path / 'state'}")

    async def main():
        async with serving(create_app(config)) as client:
            assert (await client.get("/v1/streams/s")).status_code == 404

    run(main())


@pytest.mark.parametrize(
    ("field", "value"), [("hidden_size", 10**6), ("num_layers", 10_000), ("hidden_size", 30_000)]
)
def test_a_run_dir_asking_for_too_much_is_refused_before_allocating(
    run_dir, tmp_path, field, value
):
    copied = tmp_path / "run"
    shutil.copytree(run_dir, copied)
    document = json.loads((copied / "model.json").read_text())
    document["model"][field] = value
    (copied / "model.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="run directory"):
        create_app(ServeConfig(copied, token=TOKEN, store="memory://"))


def test_tokens_are_stripped_consistently_and_short_ones_refused(run_dir):
    config = ServeConfig(run_dir, token=f"  {TOKEN}\n", store="memory://")
    assert config.token == TOKEN

    async def main():
        async with serving(create_app(config), headers=AUTH) as client:
            assert (await client.get("/v1/streams/none")).status_code == 404  # authorised

    run(main())
    with pytest.raises(ValueError, match="at least 16"):
        ServeConfig(run_dir, token="short-token", store="memory://")
    with pytest.raises(ValueError, match="whitespace"):
        ServeConfig(run_dir, token="has a space inside it", store="memory://")
    assert exposure_warning("0.0.0.0", auth=False) is not None
    assert "ANYONE" in exposure_warning("10.1.2.3", auth=False)
    assert exposure_warning("127.0.0.1", auth=False) is None
    assert exposure_warning("0.0.0.0", auth=True) is None


def test_live_streams_and_in_flight_bytes_are_bounded(run_dir):
    async def main():
        app = create_app(make_config(run_dir, max_live_streams=2, max_inflight_bytes=400))
        async with serving(app) as client:
            for stream in ("a", "b"):
                r = await client.post(f"/v1/streams/{stream}/steps", json={"seq": 1, "x": X})
                assert r.status_code == 200
            third = await client.post("/v1/streams/c/steps", json={"seq": 1, "x": X})
            assert third.status_code == 503 and third.json()["code"] == "stream_capacity"
            assert (await client.post("/v1/streams/a/steps", json={"seq": 2, "x": X})).is_success
            assert (await client.delete("/v1/streams/b")).status_code == 200
            assert (await client.post("/v1/streams/c/steps", json={"seq": 1, "x": X})).is_success
            # a body past the whole in-flight bound could never be read: 413, not a 429 to
            # retry forever
            big = {"seq": 1, "x": [X] * 40}  # under max_body_bytes, over the in-flight bound
            never = await client.post("/v1/streams/d/steps", json=big)
            assert never.status_code == 413 and never.json()["code"] == "body_too_large"
            assert never.json()["limit"] == 400
            # bodies that fit alone but not together: the one past the bound waits its turn
            release = asyncio.Event()

            async def slow_body():
                yield b'{"seq": 3, "x": [' + b" " * 300  # held: 300+ bytes in flight
                await release.wait()
                yield b"[0.1, 0.2, 0.3]]}"

            held = asyncio.create_task(client.post("/v1/streams/a/steps", content=slow_body()))
            await asyncio.sleep(0.2)
            busy = await client.post("/v1/streams/f/steps", json={"seq": 1, "x": [X] * 5})
            release.set()
            assert busy.status_code == 429 and busy.json()["code"] == "server_busy"
            assert busy.headers["retry-after"] == "1"
            assert (await held).status_code == 200, (await held).text

    run(main())


def test_a_mixed_stack_is_served_and_bounded_like_any_model(tmp_path):
    from seqstate.core.model import ModelConfig, RecurrentSpec

    torch.manual_seed(0)
    layers = (RecurrentSpec("gru", 6), RecurrentSpec("lstm", 5))
    model = SequenceModel(ModelConfig(input_size=3, output_size=2, layers=layers))
    save_model(model, tmp_path / "stack")
    steps = [([0.1, 0.2, 0.3], False), ([[0.4, 0.5, 0.6], [0.7, 0.8, 0.9]], False)]

    async def main():
        async with serving(create_app(make_config(tmp_path / "stack"))) as client:
            answers = []
            for seq, (x, _) in enumerate(steps, start=1):
                r = await client.post("/v1/streams/mixed/steps", json={"seq": seq, "x": x})
                assert r.status_code == 200, r.text
                answers.append(r.json()["y"])
            return answers

    answers = run(main())
    for got, want in zip(answers, replay(model, steps), strict=True):
        assert np.allclose(got, want, atol=1e-5)
    document = json.loads((tmp_path / "stack" / "model.json").read_text())
    document["model"]["layers"] = [{"kind": "lstm", "hidden_size": 5}] * 100
    (tmp_path / "stack" / "model.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="layers"):
        create_app(ServeConfig(tmp_path / "stack", token=TOKEN, store="memory://"))
