"""Batches of many small rows: a ragged field's rows sent as one buffer,
tags encoded and decoded a batch at a time, with what each row gets
unchanged."""

import numpy as np
import pytest

import tq
from tq import columns as cols
from tq.meta import tags_from_json_list, tags_to_json_list


def test_small_ragged_rows_go_as_one_buffer():
    rows = [np.arange(i, dtype=np.int32) for i in range(50)]
    c = cols.to_column("r", rows, 50)
    assert len(c.bufs) == 1 and bytes(c.bufs[0]) == b"".join(r.tobytes() for r in rows)
    assert c.row_lens == [r.nbytes for r in rows] and c.shapes == [r.shape for r in rows]
    big = [np.zeros(cols.JOIN_ROWS_BELOW, dtype=np.uint8) for _ in range(3)]
    c = cols.to_column("b", big, 3)
    assert len(c.bufs) == 3 and all(b is r for b, r in zip(c.bufs, big)), "large rows are not copied"


@pytest.mark.parametrize("rows,dtype", [
    ([np.arange(6, dtype=np.float32)[::2], np.arange(3, dtype=np.float32)], "float32"),  # not contiguous
    ([np.arange(3, dtype=">i4"), np.arange(2, dtype=">i4")], "int32"),  # big-endian
    ([np.arange(3, dtype=np.uint16).view(cols.bfloat16), np.arange(1, dtype=np.uint16).view(cols.bfloat16)],
     "bfloat16"),
    ([np.arange(4.0).reshape(2, 2), [1.0, 2.0]], "float64"),  # a list among arrays
])
def test_ragged_rows_of_every_form(rows, dtype):
    c = cols.to_column("r", rows, len(rows))
    assert c.dtype == dtype
    want = b"".join(np.ascontiguousarray(np.asarray(r), dtype=np.asarray(r).dtype.newbyteorder("<")).tobytes()
                    for r in rows)
    assert b"".join(bytes(memoryview(b).cast("B")) for b in c.bufs) == want


def test_ragged_rows_that_mix_dtypes_are_refused():
    with pytest.raises(tq.InvalidError, match=r"mixes dtypes \['float32', 'int64'\]"):
        cols.to_column("r", [np.zeros(2, np.float32), np.zeros(2, np.int64)], 2)
    with pytest.raises(tq.InvalidError, match="not a tensor field"):
        cols.to_column("r", [np.array(["a"]), np.array(["b"])], 2)


@pytest.mark.parametrize("rows,names", [
    ([np.array([1, 2], np.uint16).view(tq.bfloat16), np.array([16256], np.uint16)], "'bfloat16', 'uint16'"),
    ([np.array([1, 2], np.uint8).view(tq.float8_e4m3fn), np.array([3], np.uint8).view(tq.float8_e5m2)],
     "'float8_e4m3fn', 'float8_e5m2'"),
])
def test_ragged_rows_of_one_numpy_dtype_and_two_tq_dtypes_are_refused(rows, names):
    """Rows whose numpy dtypes compare equal but whose metadata marks
    them as different TQ dtypes (uint16 and bfloat16, the two float8
    kinds) are a mix, refused as the rows of a non-contiguous row are:
    not stored as the first row's dtype, which would change the others'
    values."""
    with pytest.raises(tq.InvalidError, match=rf"mixes dtypes \[{names}\]"):
        cols.to_column("r", rows, 2)


@pytest.mark.parametrize("value,why", [
    ([[[1, 2], [3]], [[4]]], "inhomogeneous"),  # a row that is itself ragged
    ((np.arange(3.0), [[0], [1, 2], [3]]), "offsets"),  # offsets that are no 1-D array
    ((np.arange(3.0), [0, float("nan"), 3]), "offsets of float64"),
    ((np.arange(3.0), [0, 1.5, 3]), "offsets of float64"),  # truncated to [0, 1, 3], taken
])
def test_values_numpy_cannot_take_are_invalid_naming_the_field(value, why):
    """A value numpy cannot make an array of, or offsets that are not
    integers, are an InvalidError naming the field, as to_column says.
    They were numpy's ValueError, naming no field (float offsets were
    truncated and the rows taken)."""
    with pytest.raises(tq.InvalidError, match=why) as e:
        cols.to_column("ids", value, 2)
    assert e.value.fields == ["ids"] and "'ids'" in str(e.value)


def test_tags_a_batch_at_a_time():
    same = {"status": "done", "n": [1, 2]}
    enc = tags_to_json_list([same, same, None, {"x": 1.5}])
    assert enc == [b'{"status":"done","n":[1,2]}'] * 2 + [b"{}", b'{"x":1.5}']
    with pytest.raises(tq.InvalidError, match="a tag must be a dict, not list"):
        tags_to_json_list([same, ["not", "a", "dict"]])
    got = tags_from_json_list([enc[0], b"", enc[0], enc[3]])
    assert got == [same, {}, same, {"x": 1.5}]
    got[0]["n"].append(3)
    assert got[2] == same, "every row gets its own dict"
    # Rows with the bytes of the row before: their own dicts too, nested
    # values included.
    got = tags_from_json_list([enc[0], enc[0], enc[3], enc[3], enc[3], b"", b"", enc[0]])
    assert got == [same, same, {"x": 1.5}, {"x": 1.5}, {"x": 1.5}, {}, {}, same]
    got[0]["n"].append(3)
    got[2]["x"] = 0
    got[5]["y"] = 1
    assert got[1] == same and got[7] == same and got[3] == got[4] == {"x": 1.5} and got[6] == {}
    assert tags_from_json_list([b"null", b"null", b"[1]", b"[1]"]) == [None, None, [1], [1]]
    # Not objects: each parsed alone, as before.
    assert tags_from_json_list([b"[1]", b"{}"]) == [[1], {}]
    with pytest.raises(ValueError):
        tags_from_json_list([b'{"x":[1', b'2]},{"y":3}'])


def test_many_keys_round_trip(client, part):
    n = 3000
    rng = np.random.default_rng(7)
    keys = [f"k{i}" for i in range(n)]
    resp = [rng.integers(0, 1000, rng.integers(0, 40)).astype(np.int32) for _ in range(n)]
    tag = {"status": "finished"}
    m = client.kv_batch_put(keys, part, {"resp": resp, "r": rng.random(n, dtype=np.float32)}, [tag] * n)
    assert m.tags == [tag] * n and m.tags[0] is not m.tags[1]
    got = client.kv_batch_get(keys, part)
    assert all(np.array_equal(g, w) for g, w in zip(got["resp"], resp))
    listed = client.kv_list(part)[part]
    assert listed == {k: tag for k in keys}


def test_ragged_rows_decode_as_slices_of_any_shape(client, part):
    rows = [np.arange(6, dtype=np.int16).reshape(2, 3), np.zeros((0, 4), np.int16), np.array(7, dtype=np.int16),
            np.arange(3, dtype=np.int16), np.zeros(0, np.int16)]
    client.kv_batch_put([f"s{i}" for i in range(len(rows))], part, {"r": rows})
    got = client.kv_batch_get([f"s{i}" for i in range(len(rows))], part)["r"]
    assert [g.shape for g in got] == [r.shape for r in rows]
    assert all(np.array_equal(g, r) and g.dtype == r.dtype for g, r in zip(got, rows))
    c = cols.to_column("r", rows, len(rows))
    with pytest.raises(tq.CorruptError, match="5 ragged rows of int16: 5 shapes of 20 bytes over 18 bytes"):
        cols.from_bytes("int16", "ragged", None, c.shapes, None, len(rows), bytes(c.bufs[0])[:-2])


def test_to_tensor_of_a_dtype_torch_lacks_names_it():
    """torch before 2.3 has no uint16/32/64 tensors: turning such a field
    into a tensor is NotSupportedError naming the field and the dtype (it
    was torch's bare TypeError, naming neither)."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if hasattr(torch, "uint32"):
        pytest.skip(f"torch {torch.__version__} has uint32 tensors")
    with pytest.raises(tq.NotSupportedError, match="field 'ids': torch .* has no uint32 tensors") as e:
        tq.columns.to_tensor(np.zeros(2, np.uint32), "ids")
    assert e.value.fields == ["ids"]
    assert tq.columns.to_tensor(np.zeros(2, np.int32), "ids").dtype == torch.int32
