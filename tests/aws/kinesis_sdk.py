"""The official AWS SDK for Python (boto3) against weir's Kinesis API.

Run by tests/aws_sdk.rs with: ENDPOINT, ACCESS_KEY_ID, SECRET_ACCESS_KEY.
Each check prints one line; the last line counts them, and any failure exits 1.
"""

import datetime
import hashlib
import os
import sys
import time
import types
from unittest import mock

import boto3
import botocore.auth
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ENDPOINT"]
KEY_ID = os.environ["ACCESS_KEY_ID"]
SECRET = os.environ["SECRET_ACCESS_KEY"]
CONFIG = Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10)
passed, failed = 0, 0


def client(key_id=KEY_ID, secret=SECRET):
    return boto3.client(
        "kinesis",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=CONFIG,
    )


def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"ok   {name}")
    except Exception as e:  # report every check, not just the first failure
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def error_code(fn):
    try:
        fn()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


k = client()
f = boto3.client(
    "firehose",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    aws_access_key_id=KEY_ID,
    aws_secret_access_key=SECRET,
    config=CONFIG,
)
STREAM = "sdk-test"
state = {}


def create():
    k.create_stream(StreamName=STREAM, ShardCount=1)
    k.get_waiter("stream_exists").wait(StreamName=STREAM, WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    assert STREAM in k.list_streams()["StreamNames"]
    assert error_code(lambda: k.create_stream(StreamName=STREAM, ShardCount=1)) == "ResourceInUseException"


def describe():
    d = k.describe_stream(StreamName=STREAM)["StreamDescription"]
    assert d["StreamStatus"] == "ACTIVE", d
    assert d["RetentionPeriodHours"] == 24, d
    state["shard"] = d["Shards"][0]["ShardId"]
    s = k.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]
    assert s["OpenShardCount"] == 1, s
    shards = k.list_shards(StreamName=STREAM)["Shards"]
    assert [x["ShardId"] for x in shards] == [state["shard"]], shards


def put_and_read_back():
    state["before"] = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=2)
    first = k.put_record(StreamName=STREAM, Data=b"hello", PartitionKey="k1")
    state["seq0"] = first["SequenceNumber"]
    batch = k.put_records(StreamName=STREAM, Records=[{"Data": f"r{i}".encode(), "PartitionKey": f"p{i}"} for i in range(10)])
    assert batch["FailedRecordCount"] == 0, batch
    assert len(batch["Records"]) == 10
    it = k.get_shard_iterator(StreamName=STREAM, ShardId=state["shard"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    out = k.get_records(ShardIterator=it, Limit=100)
    assert [r["Data"] for r in out["Records"]] == [b"hello"] + [f"r{i}".encode() for i in range(10)], out["Records"]
    assert out["Records"][1]["PartitionKey"] == "p0"
    assert out["MillisBehindLatest"] == 0


def iterator_types():
    def first_data(kind, **extra):
        it = k.get_shard_iterator(StreamName=STREAM, ShardId=state["shard"], ShardIteratorType=kind, **extra)["ShardIterator"]
        records = k.get_records(ShardIterator=it, Limit=1)["Records"]
        return records[0]["Data"] if records else None

    assert first_data("AT_SEQUENCE_NUMBER", StartingSequenceNumber=state["seq0"]) == b"hello"
    assert first_data("AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=state["seq0"]) == b"r0"
    assert first_data("AT_TIMESTAMP", Timestamp=state["before"]) == b"hello"
    assert first_data("AT_TIMESTAMP", Timestamp=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)) is None
    latest = k.get_shard_iterator(StreamName=STREAM, ShardId=state["shard"], ShardIteratorType="LATEST")["ShardIterator"]
    empty = k.get_records(ShardIterator=latest)
    assert empty["Records"] == []
    k.put_record(StreamName=STREAM, Data=b"new", PartitionKey="k")
    after = k.get_records(ShardIterator=empty["NextShardIterator"])
    assert [r["Data"] for r in after["Records"]] == [b"new"], after


def retention():
    k.increase_stream_retention_period(StreamName=STREAM, RetentionPeriodHours=48)
    assert k.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]["RetentionPeriodHours"] == 48
    k.decrease_stream_retention_period(StreamName=STREAM, RetentionPeriodHours=24)
    code = error_code(lambda: k.decrease_stream_retention_period(StreamName=STREAM, RetentionPeriodHours=12))
    assert code == "InvalidArgumentException", code


def errors():
    assert error_code(lambda: k.describe_stream(StreamName="nope")) == "ResourceNotFoundException"
    assert error_code(lambda: k.get_records(ShardIterator="forged")) == "InvalidArgumentException"
    bad = k.put_records(StreamName=STREAM, Records=[{"Data": b"ok", "PartitionKey": "k"}, {"Data": b"x", "PartitionKey": "k", "ExplicitHashKey": "-1"}])
    assert bad["FailedRecordCount"] == 1, bad
    assert bad["Records"][1]["ErrorCode"] == "InvalidArgumentException", bad


def wrong_secret():
    code = error_code(lambda: client(secret="not-the-secret").put_record(StreamName=STREAM, Data=b"x", PartitionKey="k"))
    assert code == "InvalidSignatureException", code
    code = error_code(lambda: client(key_id="AKIDUNKNOWN").list_streams())
    assert code == "UnrecognizedClientException", code


def stale_date():
    class Skewed(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return datetime.datetime.utcnow() - datetime.timedelta(minutes=10)

    shim = types.SimpleNamespace(datetime=Skewed, timedelta=datetime.timedelta, timezone=datetime.timezone)
    with mock.patch.object(botocore.auth, "datetime", shim):
        code = error_code(lambda: k.list_streams())
    assert code == "InvalidSignatureException", code


def shards():
    k.create_stream(StreamName="sharded", ShardCount=4)
    d = k.describe_stream(StreamName="sharded")["StreamDescription"]
    ids = [s["ShardId"] for s in d["Shards"]]
    assert len(ids) == 4, ids
    ranges = [(int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"])) for s in d["Shards"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == 2**128 - 1, ranges
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:])), ranges
    out = k.put_records(StreamName="sharded", Records=[{"Data": str(i).encode(), "PartitionKey": f"key-{i}"} for i in range(100)])
    assert out["FailedRecordCount"] == 0, out
    for i, r in enumerate(out["Records"]):
        h = int(hashlib.md5(f"key-{i}".encode()).hexdigest(), 16)
        owner = next(sid for sid, (a, b) in zip(ids, ranges) if a <= h <= b)
        assert r["ShardId"] == owner, (i, r["ShardId"], owner)
    total = 0
    for sid in ids:
        it = k.get_shard_iterator(StreamName="sharded", ShardId=sid, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        total += len(k.get_records(ShardIterator=it)["Records"])
    assert total == 100, total
    pinned = k.put_record(StreamName="sharded", Data=b"x", PartitionKey="any", ExplicitHashKey=str(2**128 - 1))
    assert pinned["ShardId"] == ids[-1], pinned
    assert len(k.list_shards(StreamName="sharded")["Shards"]) == 4
    # Uniform resharding: the four close, two children take over.
    r = k.update_shard_count(StreamName="sharded", TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    assert (r["CurrentShardCount"], r["TargetShardCount"]) == (4, 2), r
    d = k.describe_stream(StreamName="sharded")["StreamDescription"]
    closed = [s for s in d["Shards"] if "EndingSequenceNumber" in s["SequenceNumberRange"]]
    children = [s for s in d["Shards"] if "ParentShardId" in s]
    assert len(closed) == 4 and len(children) == 2, d["Shards"]
    assert k.describe_stream_summary(StreamName="sharded")["StreamDescriptionSummary"]["OpenShardCount"] == 2
    # Reading a closed shard to its end ends the iterator and names its children.
    it = k.get_shard_iterator(StreamName="sharded", ShardId=ids[0], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    out = k.get_records(ShardIterator=it)
    assert "NextShardIterator" not in out or out["NextShardIterator"] is None, out
    assert [c["ShardId"] for c in out["ChildShards"]] == [children[0]["ShardId"]], out["ChildShards"]
    after = k.put_record(StreamName="sharded", Data=b"y", PartitionKey="key-1")
    assert after["ShardId"] in [c["ShardId"] for c in children], after
    k.delete_stream(StreamName="sharded")


def firehose():
    assert f.list_delivery_streams()["DeliveryStreamNames"] == ["sdk-rows"]
    d = f.describe_delivery_stream(DeliveryStreamName="sdk-rows")["DeliveryStreamDescription"]
    assert d["DeliveryStreamStatus"] == "ACTIVE", d
    assert f.put_record(DeliveryStreamName="sdk-rows", Record={"Data": b"one\n"})["RecordId"]
    batch = f.put_record_batch(DeliveryStreamName="sdk-rows", Records=[{"Data": b"two\n"}, {"Data": b"three\n"}])
    assert batch["FailedPutCount"] == 0, batch
    code = error_code(lambda: f.put_record(DeliveryStreamName="nope", Record={"Data": b"x"}))
    assert code == "ResourceNotFoundException", code


def delete():
    k.delete_stream(StreamName=STREAM)
    assert STREAM not in k.list_streams()["StreamNames"]
    assert error_code(lambda: k.describe_stream(StreamName=STREAM)) == "ResourceNotFoundException"


for name, fn in [
    ("create a stream and wait for it", create),
    ("describe, summarize and list shards", describe),
    ("put single and batched records and read them back", put_and_read_back),
    ("every shard iterator type", iterator_types),
    ("change the retention period", retention),
    ("errors have AWS's types", errors),
    ("a wrong secret or an unknown key is refused", wrong_secret),
    ("a stale date is refused", stale_date),
    ("records spread over shards by the MD5 of their key, and reshard", shards),
    ("delete the stream", delete),
    ("Firehose: list, describe, put and put a batch", firehose),
]:
    check(name, fn)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
