"""A KPL-style producer against weir: aws-kinesis-agg aggregates toll lines into
Kinesis records, boto3 puts them (with a few plain records and one broken
aggregate), and a Kinesis API reader gets the aggregates back intact and
de-aggregates them itself, as the KCL does.

Run by tests/aws_sdk.rs with: ENDPOINT, ACCESS_KEY_ID, SECRET_ACCESS_KEY, LINES.
Prints `aggregates <n>` and `read back <n> user records`.
"""

import os

import boto3
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from botocore.config import Config

k = boto3.client(
    "kinesis",
    endpoint_url=os.environ["ENDPOINT"],
    region_name="us-east-1",
    aws_access_key_id=os.environ["ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["SECRET_ACCESS_KEY"],
    config=Config(retries={"max_attempts": 1}),
)
lines = int(os.environ["LINES"])
STREAM = "toll-lines"

# Small aggregates, so that the lines make several of them.
aggregator = RecordAggregator(max_size=20_000)
aggregates = []
for i in range(lines):
    line = f"T0042-{i:06},2026-11-26T15:{i // 60 % 60:02}:{i % 60:02}Z,42,1,TAG{i:07},C{i % 97:06},1,{100 + i}"
    full = aggregator.add_user_record(partition_key=f"C{i % 97:06}", data=line.encode())
    if full:
        aggregates.append(full)
last = aggregator.clear_and_get()
if last:
    aggregates.append(last)
entries = []
for a in aggregates:
    pk, ehk, data = a.get_contents()
    entry = {"PartitionKey": pk, "Data": data}
    if ehk:
        entry["ExplicitHashKey"] = ehk
    entries.append(entry)
# Plain records beside them, and one aggregate whose digest does not match.
for i in range(5):
    entries.append({"PartitionKey": "plain", "Data": f"T0043-{i:06},2026-11-26T15:00:00Z,43,1,TAGP{i:06},C000001,1,100".encode()})
broken = bytearray(entries[0]["Data"])
broken[-1] ^= 0xFF
entries.append({"PartitionKey": "broken", "Data": bytes(broken)})
answer = k.put_records(StreamName=STREAM, Records=entries)
assert answer["FailedRecordCount"] == 0, answer
print(f"aggregates {len(aggregates)}")

# The Kinesis API hands the aggregates back as they were put: the reader de-aggregates.
records = []
for shard in k.list_shards(StreamName=STREAM)["Shards"]:
    it = k.get_shard_iterator(StreamName=STREAM, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records += k.get_records(ShardIterator=it, Limit=10000)["Records"]
intact = [r for r in records if r["PartitionKey"] not in ("plain", "broken")]
users = list(iter_deaggregate_records(intact, data_format="Boto3"))
print(f"read {len(records)} records; {len(intact)} aggregates")
print(f"read back {len(users)} user records")
