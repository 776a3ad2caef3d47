"""The official AWS SDK for Python (boto3) against weir's Kinesis API.

Run by tests/aws_sdk.rs with: ENDPOINT, ACCESS_KEY_ID, SECRET_ACCESS_KEY.
Each check prints one line; the last line counts them, and any failure exits 1.

With PEER set (to the name of another Kinesis emulator at ENDPOINT), the same
checks run against it, to confirm that they encode AWS's behaviour and not
weir's: the parts it does not implement are skipped and counted.
"""

import datetime
import hashlib
import io
import os
import sys
import threading
import time
import traceback
import types
from unittest import mock

import urllib.error
import urllib.request

import boto3
import botocore.auth
import cbor2
from cbor2 import _decoder as cbor2_python
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ENDPOINT"]
KEY_ID = os.environ["ACCESS_KEY_ID"]
SECRET = os.environ["SECRET_ACCESS_KEY"]
PEER = os.environ.get("PEER")
CONFIG = Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10)
passed, failed, skipped = 0, 0, 0


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
        line = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__][-1]
        print(f"FAIL {name} (line {line}): {type(e).__name__}: {e}")


def weir_only():
    """Whether to run a part the peer does not implement (always, against weir)."""
    global skipped
    if PEER:
        skipped += 1
    return not PEER


def settled(name):
    """Waits until a stream is ACTIVE (weir's are at once; a peer's may be CREATING or UPDATING)."""
    k.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})


def make_stream(name, **extra):
    k.create_stream(StreamName=name, **extra)
    settled(name)


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
    make_stream(STREAM, ShardCount=1)
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
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    assert error_code(lambda: first_data("AT_TIMESTAMP", Timestamp=future)) == "InvalidArgumentException"
    latest = k.get_shard_iterator(StreamName=STREAM, ShardId=state["shard"], ShardIteratorType="LATEST")["ShardIterator"]
    empty = k.get_records(ShardIterator=latest)
    assert empty["Records"] == []
    k.put_record(StreamName=STREAM, Data=b"new", PartitionKey="k")
    after = k.get_records(ShardIterator=empty["NextShardIterator"])
    assert [r["Data"] for r in after["Records"]] == [b"new"], after


def retention():
    k.increase_stream_retention_period(StreamName=STREAM, RetentionPeriodHours=48)
    settled(STREAM)
    assert k.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]["RetentionPeriodHours"] == 48
    k.decrease_stream_retention_period(StreamName=STREAM, RetentionPeriodHours=24)
    settled(STREAM)
    code = error_code(lambda: k.decrease_stream_retention_period(StreamName=STREAM, RetentionPeriodHours=12))
    assert code == "InvalidArgumentException", code


def errors():
    assert error_code(lambda: k.describe_stream(StreamName="nope")) == "ResourceNotFoundException"
    assert error_code(lambda: k.get_records(ShardIterator="forged")) == "InvalidArgumentException"
    # A malformed entry refuses the whole batch, not only itself.
    bad = [{"Data": b"ok", "PartitionKey": "k"}, {"Data": b"x", "PartitionKey": "k", "ExplicitHashKey": "-1"}]
    assert error_code(lambda: k.put_records(StreamName=STREAM, Records=bad)) == "InvalidArgumentException"


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
    make_stream("sharded", ShardCount=4)
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
    assert error_code(lambda: k.create_stream(StreamName="too-big", ShardCount=257)) == "LimitExceededException"
    if weir_only():
        uniform_resharding(ids)
        # weir's limit is 256 open shards per stream: a split past it is refused as Kinesis refuses one.
        make_stream("full", ShardCount=256)
        code = error_code(lambda: k.split_shard(StreamName="full", ShardToSplit="shardId-000000000000", NewStartingHashKey="1000"))
        assert code == "LimitExceededException", code
        k.delete_stream(StreamName="full")
    k.delete_stream(StreamName="sharded")


def uniform_resharding(ids):
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


def firehose():
    assert f.list_delivery_streams()["DeliveryStreamNames"] == ["sdk-rows"]
    d = f.describe_delivery_stream(DeliveryStreamName="sdk-rows")["DeliveryStreamDescription"]
    assert d["DeliveryStreamStatus"] == "ACTIVE", d
    assert f.put_record(DeliveryStreamName="sdk-rows", Record={"Data": b"one\n"})["RecordId"]
    batch = f.put_record_batch(DeliveryStreamName="sdk-rows", Records=[{"Data": b"two\n"}, {"Data": b"three\n"}])
    assert batch["FailedPutCount"] == 0, batch
    code = error_code(lambda: f.put_record(DeliveryStreamName="nope", Record={"Data": b"x"}))
    assert code == "ResourceNotFoundException", code


def sequence_numbers():
    # 56 decimal digits, increasing within a shard, as numbers and as text.
    out = k.put_records(StreamName=STREAM, Records=[{"Data": b"s", "PartitionKey": "k"} for _ in range(3)])
    numbers = [r["SequenceNumber"] for r in out["Records"]]
    assert all(len(n) == 56 and n.isdigit() for n in numbers), numbers
    assert numbers == sorted(numbers) and [int(n) for n in numbers] == sorted(int(n) for n in numbers), numbers
    assert len(state["seq0"]) == 56 and state["seq0"] < numbers[0], state["seq0"]
    # A number of another shard is refused, as Kinesis refuses it.
    make_stream("two-shards", ShardCount=2)
    a = k.put_record(StreamName="two-shards", Data=b"a", PartitionKey="a", ExplicitHashKey="0")
    b = k.put_record(StreamName="two-shards", Data=b"b", PartitionKey="b", ExplicitHashKey=str(2**128 - 1))
    assert a["ShardId"] != b["ShardId"] and a["SequenceNumber"] != b["SequenceNumber"], (a, b)
    code = error_code(lambda: k.get_shard_iterator(StreamName="two-shards", ShardId=a["ShardId"],
                                                   ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=b["SequenceNumber"]))
    assert code == "InvalidArgumentException", code
    if weir_only():
        other_stream(a)
    k.delete_stream(StreamName="two-shards")


def other_stream(a):
    # ...and so is one of another stream (kinesalite does not check that).
    code = error_code(lambda: k.get_shard_iterator(StreamName=STREAM, ShardId=state["shard"],
                                                   ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=a["SequenceNumber"]))
    assert code == "InvalidArgumentException", code


def tags_mode_and_encryption():
    arn = k.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]["StreamARN"]
    k.add_tags_to_stream(StreamName=STREAM, Tags={"team": "tolls", "env": "test", "cost-center": "42"})
    first = k.list_tags_for_stream(StreamName=STREAM, Limit=2)
    assert [t["Key"] for t in first["Tags"]] == ["cost-center", "env"] and first["HasMoreTags"], first
    rest = k.list_tags_for_stream(StreamName=STREAM, ExclusiveStartTagKey="env")
    assert rest["Tags"] == [{"Key": "team", "Value": "tolls"}] and not rest["HasMoreTags"], rest
    k.remove_tags_from_stream(StreamName=STREAM, TagKeys=["env"])
    assert [t["Key"] for t in k.list_tags_for_stream(StreamName=STREAM)["Tags"]] == ["cost-center", "team"]
    if weir_only():
        # More than 50 in all (kinesalite still allows only 10 per call, as Kinesis once did).
        too_many = {f"k{i}": "v" for i in range(49)}
        assert error_code(lambda: k.add_tags_to_stream(StreamName=STREAM, Tags=too_many)) == "LimitExceededException"
        mode_encryption_and_limits(arn)


def mode_encryption_and_limits(arn):
    # Addressed by ARN, as the SDKs v2 do.
    k.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    k.start_stream_encryption(StreamName=STREAM, EncryptionType="KMS", KeyId="alias/aws/kinesis")
    s = k.describe_stream_summary(StreamARN=arn)["StreamDescriptionSummary"]
    assert s["StreamModeDetails"]["StreamMode"] == "ON_DEMAND", s
    assert (s["EncryptionType"], s["KeyId"]) == ("KMS", "alias/aws/kinesis"), s
    k.stop_stream_encryption(StreamName=STREAM, EncryptionType="KMS", KeyId="alias/aws/kinesis")
    k.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "PROVISIONED"})
    s = k.describe_stream(StreamName=STREAM)["StreamDescription"]
    assert (s["EncryptionType"], s["StreamModeDetails"]["StreamMode"]) == ("NONE", "PROVISIONED"), s
    limits = k.describe_limits()
    assert limits["ShardLimit"] == 256 and limits["OpenShardCount"] >= 1, limits
    # A stream created with tags and a mode keeps them.
    k.create_stream(StreamName="tagged", ShardCount=1, StreamModeDetails={"StreamMode": "ON_DEMAND"}, Tags={"a": "b"})
    assert k.list_tags_for_stream(StreamName="tagged")["Tags"] == [{"Key": "a", "Value": "b"}]
    summaries = {x["StreamName"]: x for x in k.list_streams()["StreamSummaries"]}
    assert summaries["tagged"]["StreamModeDetails"]["StreamMode"] == "ON_DEMAND", summaries
    k.delete_stream(StreamName="tagged")


def consumers():
    arn = k.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]["StreamARN"]
    c = k.register_stream_consumer(StreamARN=arn, ConsumerName="billing")["Consumer"]
    assert c["ConsumerStatus"] == "ACTIVE" and c["ConsumerARN"].startswith(arn + "/consumer/billing:"), c
    again = error_code(lambda: k.register_stream_consumer(StreamARN=arn, ConsumerName="billing"))
    assert again == "ResourceInUseException", again
    d = k.describe_stream_consumer(ConsumerARN=c["ConsumerARN"])["ConsumerDescription"]
    assert (d["ConsumerName"], d["StreamARN"]) == ("billing", arn), d
    k.register_stream_consumer(StreamARN=arn, ConsumerName="audit")
    assert [x["ConsumerName"] for x in k.list_stream_consumers(StreamARN=arn)["Consumers"]] == ["audit", "billing"]
    assert k.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]["ConsumerCount"] == 2
    k.deregister_stream_consumer(StreamARN=arn, ConsumerName="audit")
    k.deregister_stream_consumer(ConsumerARN=c["ConsumerARN"])
    assert k.list_stream_consumers(StreamARN=arn)["Consumers"] == []
    gone = error_code(lambda: k.describe_stream_consumer(StreamARN=arn, ConsumerName="billing"))
    assert gone == "ResourceNotFoundException", gone


def split_merge_and_list_shards():
    make_stream("lineage", ShardCount=1)
    parent = k.list_shards(StreamName="lineage")["Shards"][0]
    k.put_records(StreamName="lineage", Records=[{"Data": f"before-{i}".encode(), "PartitionKey": f"k{i}"} for i in range(20)])
    k.split_shard(StreamName="lineage", ShardToSplit=parent["ShardId"], NewStartingHashKey=str(2**127))
    settled("lineage")
    k.put_records(StreamName="lineage", Records=[{"Data": f"after-{i}".encode(), "PartitionKey": f"k{i}"} for i in range(20)])
    shards = k.list_shards(StreamName="lineage")["Shards"]
    assert len(shards) == 3, shards
    children = [s for s in shards if s.get("ParentShardId") == parent["ShardId"]]
    assert [(s["HashKeyRange"]["StartingHashKey"], s["HashKeyRange"]["EndingHashKey"]) for s in children] == [
        ("0", str(2**127 - 1)), (str(2**127), str(2**128 - 1))], children
    if weir_only():
        shard_filters(parent, children)
    paged_shards(shards)
    if weir_only():
        # A closed shard cannot be split again (kinesalite does not check that).
        code = error_code(lambda: k.split_shard(StreamName="lineage", ShardToSplit=parent["ShardId"], NewStartingHashKey="5"))
        assert code == "InvalidArgumentException", code
    # Each child keeps at least two hash keys.
    code = error_code(lambda: k.split_shard(StreamName="lineage", ShardToSplit=children[0]["ShardId"], NewStartingHashKey="1"))
    assert code == "InvalidArgumentException", code
    read_the_lineage(parent, children)
    # Merging the two children gives one shard with both as parents.
    k.merge_shards(StreamName="lineage", ShardToMerge=children[0]["ShardId"], AdjacentShardToMerge=children[1]["ShardId"])
    settled("lineage")
    merged = [s for s in k.list_shards(StreamName="lineage")["Shards"] if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
    assert len(merged) == 1 and (merged[0]["ParentShardId"], merged[0]["AdjacentParentShardId"]) == (
        children[0]["ShardId"], children[1]["ShardId"]), merged
    assert merged[0]["HashKeyRange"] == {"StartingHashKey": "0", "EndingHashKey": str(2**128 - 1)}, merged
    k.delete_stream(StreamName="lineage")


def shard_filters(parent, children):
    latest = k.list_shards(StreamName="lineage", ShardFilter={"Type": "AT_LATEST"})["Shards"]
    assert [s["ShardId"] for s in latest] == [s["ShardId"] for s in children], latest
    horizon = k.list_shards(StreamName="lineage", ShardFilter={"Type": "AT_TRIM_HORIZON"})["Shards"]
    assert [s["ShardId"] for s in horizon] == [parent["ShardId"]], horizon
    every = k.list_shards(StreamName="lineage", ShardFilter={"Type": "FROM_TRIM_HORIZON"})["Shards"]
    assert len(every) == 3, every
    after = k.list_shards(StreamName="lineage", ShardFilter={"Type": "AFTER_SHARD_ID", "ShardId": parent["ShardId"]})["Shards"]
    assert after == children, after


def paged_shards(shards):
    # Pages of one shard, through NextToken.
    paged, token = [], None
    while True:
        page = k.list_shards(NextToken=token, MaxResults=1) if token else k.list_shards(StreamName="lineage", MaxResults=1)
        paged += page["Shards"]
        token = page.get("NextToken")
        if not token:
            break
    assert paged == shards, paged


def read_the_lineage(parent, children):
    # A reader following the lineage, parent first, gets every record once.
    def read_all(shard_id):
        it = k.get_shard_iterator(StreamName="lineage", ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        got = []
        while it:
            out = k.get_records(ShardIterator=it)
            got += [r["Data"].decode() for r in out["Records"]]
            it = out.get("NextShardIterator") if out["Records"] else None
            if out.get("ChildShards"):
                return got, [c["ShardId"] for c in out["ChildShards"]]
        return got, []
    got, named = read_all(parent["ShardId"])
    assert got == [f"before-{i}" for i in range(20)], got
    if weir_only():
        # The end of a closed shard names its children (kinesalite predates ChildShards).
        assert named == [s["ShardId"] for s in children], named
    after_split = sorted(sum((read_all(s["ShardId"])[0] for s in children), []))
    assert after_split == sorted(f"after-{i}" for i in range(20)), after_split


def subscribe_to_shard():
    make_stream("fanout", ShardCount=1)
    arn = k.describe_stream_summary(StreamName="fanout")["StreamDescriptionSummary"]["StreamARN"]
    consumer = k.register_stream_consumer(StreamARN=arn, ConsumerName="pusher")["Consumer"]["ConsumerARN"]
    shard = k.list_shards(StreamName="fanout")["Shards"][0]["ShardId"]
    k.put_records(StreamName="fanout", Records=[{"Data": f"early-{i}".encode(), "PartitionKey": "k"} for i in range(5)])

    def put_later():
        time.sleep(0.5)
        for i in range(5):
            k.put_record(StreamName="fanout", Data=f"late-{i}".encode(), PartitionKey="k")

    putter = threading.Thread(target=put_later)
    putter.start()
    events = k.subscribe_to_shard(ConsumerARN=consumer, ShardId=shard, StartingPosition={"Type": "TRIM_HORIZON"})["EventStream"]
    got, last, deadline = [], None, time.time() + 30
    for event in events:
        e = event["SubscribeToShardEvent"]
        got += [r["Data"].decode() for r in e["Records"]]
        last = e
        if len(got) >= 10 or time.time() > deadline:
            break
    events.close()
    putter.join()
    assert got == [f"early-{i}" for i in range(5)] + [f"late-{i}" for i in range(5)], got
    assert last["Records"] and last["ContinuationSequenceNumber"] == last["Records"][-1]["SequenceNumber"], last
    assert last["MillisBehindLatest"] == 0, last
    # Subscribing again after the continuation number gets only what came since.
    k.put_record(StreamName="fanout", Data=b"next", PartitionKey="k")
    again = k.subscribe_to_shard(ConsumerARN=consumer, ShardId=shard, StartingPosition={
        "Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": last["ContinuationSequenceNumber"]})["EventStream"]
    first = next(iter(again))["SubscribeToShardEvent"]
    again.close()
    assert [r["Data"] for r in first["Records"]] == [b"next"], first
    # A closed shard read to its end names its children, and the subscription ends.
    k.split_shard(StreamName="fanout", ShardToSplit=shard, NewStartingHashKey=str(2**127))
    ended = k.subscribe_to_shard(ConsumerARN=consumer, ShardId=shard, StartingPosition={
        "Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": first["ContinuationSequenceNumber"]})["EventStream"]
    final = [e["SubscribeToShardEvent"] for e in ended]
    assert len(final) == 1 and len(final[0]["ChildShards"]) == 2, final
    # Only a registered consumer may subscribe.
    k.deregister_stream_consumer(ConsumerARN=consumer)
    code = error_code(lambda: k.subscribe_to_shard(ConsumerARN=consumer, ShardId=shard, StartingPosition={"Type": "LATEST"}))
    assert code == "ResourceNotFoundException", code
    k.delete_stream(StreamName="fanout")


# The AWS SDKs' tag 1 holds epoch milliseconds, not RFC 8949's seconds: kept as a tag here
# (by cbor2's Python decoder, whose semantic tags can be replaced).
cbor2_python.semantic_decoders[1] = lambda decoder: cbor2.CBORTag(1, decoder._decode())


def cbor_loads(data):
    return cbor2_python.CBORDecoder(io.BytesIO(data)).decode()


def cbor_call(operation, body):
    """One signed Kinesis call in the CBOR 1.1 wire format, as the Java SDK v2 and the KCL send it."""
    request = AWSRequest(method="POST", url=ENDPOINT, data=cbor2.dumps(body), headers={
        "Content-Type": "application/x-amz-cbor-1.1", "X-Amz-Target": f"Kinesis_20131202.{operation}"})
    botocore.auth.SigV4Auth(Credentials(KEY_ID, SECRET), "kinesis", "us-east-1").add_auth(request)
    prepared = request.prepare()
    http = urllib.request.Request(prepared.url, data=prepared.body, headers=dict(prepared.headers), method="POST")
    try:
        with urllib.request.urlopen(http, timeout=10) as answer:
            return answer.status, answer.headers, cbor_loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, cbor_loads(e.read())


def cbor_wire():
    make_stream("cbor", ShardCount=1)
    before_ms = int(time.time() * 1000) - 2000
    status, headers, put = cbor_call("PutRecord", {"StreamName": "cbor", "Data": b"\x00binary\xff", "PartitionKey": "k"})
    assert status == 200 and headers["Content-Type"] == "application/x-amz-cbor-1.1", (status, headers)
    assert put["ShardId"] == "shardId-000000000000" and put["SequenceNumber"].isdigit(), put
    _, _, it = cbor_call("GetShardIterator", {"StreamName": "cbor", "ShardId": put["ShardId"], "ShardIteratorType": "TRIM_HORIZON"})
    _, _, out = cbor_call("GetRecords", {"ShardIterator": it["ShardIterator"], "Limit": 10})
    record = out["Records"][0]
    # Blobs are byte strings, not base64 text.
    assert record["Data"] == b"\x00binary\xff" and record["SequenceNumber"] == put["SequenceNumber"], record
    status, headers, error = cbor_call("DescribeStream", {"StreamName": "nope"})
    assert status == 400 and error["__type"] == "ResourceNotFoundException", (status, error)
    # The Java SDK reads an error's type from this header first.
    assert headers["x-amzn-ErrorType"] == "ResourceNotFoundException", headers
    # Timestamps are epoch milliseconds tagged 1, both ways.
    arrival = record["ApproximateArrivalTimestamp"]
    assert isinstance(arrival, cbor2.CBORTag) and arrival.tag == 1 and isinstance(arrival.value, int), arrival
    assert before_ms <= arrival.value <= before_ms + 60_000, arrival
    _, _, at = cbor_call("GetShardIterator", {"StreamName": "cbor", "ShardId": put["ShardId"],
                                              "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": cbor2.CBORTag(1, before_ms)})
    _, _, again = cbor_call("GetRecords", {"ShardIterator": at["ShardIterator"]})
    assert [r["Data"] for r in again["Records"]] == [b"\x00binary\xff"], again
    k.delete_stream(StreamName="cbor")


def delete():
    k.delete_stream(StreamName=STREAM)
    k.get_waiter("stream_not_exists").wait(StreamName=STREAM, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    assert STREAM not in k.list_streams()["StreamNames"]
    assert error_code(lambda: k.describe_stream(StreamName=STREAM)) == "ResourceNotFoundException"


# Checks of what only weir implements: authentication, Firehose, enhanced fan-out,
# CBOR (kinesalite answers blobs in it as JSON-shaped Node.js buffers).
WEIR_ONLY = {wrong_secret, stale_date, consumers, subscribe_to_shard, cbor_wire, firehose}

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
    ("sequence numbers are Kinesis's: 56 digits, refused on another shard or stream", sequence_numbers),
    ("tags, stream mode and encryption are kept and reported, by name or ARN", tags_mode_and_encryption),
    ("enhanced fan-out consumers are registered, described, listed and deregistered", consumers),
    ("split and merge shards; list them by filter and page; read the lineage", split_merge_and_list_shards),
    ("SubscribeToShard pushes records as they arrive, continues, and ends at a closed shard", subscribe_to_shard),
    ("the CBOR wire format: byte-string blobs, millisecond timestamps, errors", cbor_wire),
    ("delete the stream", delete),
    ("Firehose: list, describe, put and put a batch", firehose),
]:
    if fn in WEIR_ONLY and not weir_only():
        print(f"skip {name} (not implemented by {PEER})")
        continue
    check(name, fn)
print(f"{passed} passed, {failed} failed" + (f", {skipped} parts skipped on {PEER}" if PEER else ""))
sys.exit(1 if failed else 0)
