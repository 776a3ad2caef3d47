"""A KCL 3 consumer application (Java, through kclpy's MultiLangDaemon) reads a
weir stream end to end, checkpoints in a DynamoDB-compatible server, is killed,
and resumes: every record is seen, with the shard and sequence number its put
answered.

Run by tests/aws_sdk.rs with: ENDPOINT, ACCESS_KEY_ID, SECRET_ACCESS_KEY (weir),
DYNAMODB_ENDPOINT, KCL_JARS (the jars' folder), JAVA, WORK (a scratch folder),
RETRIEVAL (POLLING or FANOUT). Prints a summary; the last line is PASS or FAIL.
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import boto3

ENDPOINT = os.environ["ENDPOINT"]
WORK = os.environ["WORK"]
OUT = os.path.join(WORK, "seen.tsv")
RETRIEVAL = os.environ.get("RETRIEVAL", "POLLING")
STREAM, APP = f"kcl-orders-{RETRIEVAL.lower()}", f"kcl-orders-{RETRIEVAL.lower()}-app"
TIMEOUT = 240
started = time.time()

k = boto3.client("kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
                 aws_access_key_id=os.environ["ACCESS_KEY_ID"], aws_secret_access_key=os.environ["SECRET_ACCESS_KEY"])


def log(message):
    print(f"[{time.time() - started:6.1f} s] {message}", flush=True)


def put(first, count):
    sent = {}
    for at in range(first, first + count, 100):
        batch = [{"Data": f"order-{i:05d}".encode(), "PartitionKey": f"customer-{i}"} for i in range(at, min(at + 100, first + count))]
        answer = k.put_records(StreamName=STREAM, Records=batch)
        assert answer["FailedRecordCount"] == 0, answer
        for record, result in zip(batch, answer["Records"]):
            sent[record["Data"].decode()] = (result["ShardId"], result["SequenceNumber"])
    return sent


def properties():
    path = os.path.join(WORK, "app.properties")
    with open(path, "w") as f:
        f.write("\n".join([
            f"executableName = {sys.executable} {os.path.join(os.path.dirname(__file__), 'kcl_processor.py')}",
            f"streamName = {STREAM}",
            f"applicationName = {APP}",
            # The same worker after a restart: KCL 3's leader lock would otherwise hold a new one for 2 minutes.
            "workerId = worker-1",
            "AwsCredentialsProvider = EnvironmentVariableCredentialsProvider",
            "regionName = us-east-1",
            f"kinesisEndpoint = {ENDPOINT.rstrip('/')}",
            f"dynamoDBEndpoint = {os.environ['DYNAMODB_ENDPOINT']}",
            "initialPositionInStream = TRIM_HORIZON",
            "metricsLevel = NONE",
            f"retrievalMode = {RETRIEVAL}",
            "idleTimeBetweenReadsInMillis = 250",
            # Quicker than the defaults (minutes) for a test: shard syncs, lease assignment, failover.
            "shardSyncIntervalMillis = 1000",
            "failoverTimeMillis = 5000",
            "leaseAssignmentIntervalMillis = 1000",
            "workerMetricsReporterFreqInMillis = 1000",
            "parentShardPollIntervalMillis = 1000",
        ]) + "\n")
    return path


def launch(props, n):
    env = dict(os.environ, AWS_ACCESS_KEY_ID=os.environ["ACCESS_KEY_ID"],
               AWS_SECRET_ACCESS_KEY=os.environ["SECRET_ACCESS_KEY"], AWS_REGION="us-east-1", KCL_OUT=OUT)
    logfile = open(os.path.join(WORK, f"kcl-{n}.log"), "ab")
    command = [os.environ["JAVA"], "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               "-cp", os.path.join(os.environ["KCL_JARS"], "*"),
               "software.amazon.kinesis.multilang.MultiLangDaemon", "--properties-file", props]
    # Its own process group: the JVM and its record processors are killed together.
    return subprocess.Popen(command, env=env, stdout=logfile, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def kill(jvm, sig):
    try:
        os.killpg(jvm.pid, sig)
    except ProcessLookupError:
        return
    try:
        jvm.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(jvm.pid, signal.SIGKILL)
        jvm.wait()


def seen():
    if not os.path.exists(OUT):
        return []
    with open(OUT) as f:
        return [tuple(line.rstrip("\n").split("\t")) for line in f if line.count("\t") == 2]


def wait_for(expected, jvm, n):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if expected <= {data for _, _, data in seen()}:
            return
        if jvm.poll() is not None:
            raise SystemExit(f"the KCL exited early ({jvm.returncode}); see kcl-{n}.log")
        time.sleep(0.25)
    tail = open(os.path.join(WORK, f"kcl-{n}.log"), errors="replace").read()[-4000:]
    raise SystemExit(f"after {TIMEOUT} s the KCL had seen {len(expected & {d for _, _, d in seen()})} of {len(expected)}:\n{tail}")


jvm = None
try:
    k.create_stream(StreamName=STREAM, ShardCount=2)
    sent = put(0, 200)
    props = properties()
    jvm = launch(props, 1)
    wait_for(set(sent), jvm, 1)
    log(f"the KCL read all {len(sent)} records")
    kill(jvm, signal.SIGKILL)
    log("killed it (SIGKILL)")
    sent.update(put(200, 100))
    jvm = launch(props, 2)
    wait_for(set(sent), jvm, 2)
    log(f"restarted, it read all {len(sent)} records")
    time.sleep(1)
    kill(jvm, signal.SIGTERM)
    jvm = None
    lines = seen()
    counts = collections.Counter(data for _, _, data in lines)
    wrong = [(shard, number, data) for shard, number, data in lines if sent.get(data) != (shard, number)]
    summary = {"sent": len(sent), "seen": len(counts), "missing": len(set(sent) - set(counts)),
               "seen twice": sum(1 for c in counts.values() if c > 1), "wrong shard or number": len(wrong),
               "seconds": round(time.time() - started, 1)}
    print(json.dumps(summary))
    ok = summary["missing"] == 0 and not wrong and len(counts) == len(sent)
    if RETRIEVAL == "FANOUT":
        # Enhanced fan-out: the KCL registered its consumer (named after the app) and subscribed.
        arn = k.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]["StreamARN"]
        consumers = [c["ConsumerName"] for c in k.list_stream_consumers(StreamARN=arn)["Consumers"]]
        print(f"registered consumers: {consumers}")
        ok = ok and consumers == [APP]
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    if jvm is not None:
        kill(jvm, signal.SIGKILL)
