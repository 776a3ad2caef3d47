"""weir's API over TLS, as clients that verify certificates see it.

`tls.py certs` makes a test CA (CERTS/ca.pem) and a certificate for 127.0.0.1
from it (CERTS/cert.pem, CERTS/key.pem). `tls.py check` then, against weir at
ENDPOINT (https://...) with ACCESS_KEY_ID / SECRET_ACCESS_KEY: boto3 and urllib
trusting only that CA are served; a client that does not know it, or speaks
plain HTTP, gets nowhere; a renewed certificate is served without a restart.
The last line is PASS.
"""

import http.client
import os
import ssl
import time
import urllib.error
import urllib.request

import sys

import trustme

CERTS = os.environ["CERTS"]


def issue(ca):
    """A certificate for 127.0.0.1 from `ca`, written where the manifest points; and the CA's file."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    # The key first, then the chain: weir serves the old pair until both match.
    cert.private_key_pem.write_to_path(os.path.join(CERTS, "key.pem"))
    cert.cert_chain_pems[0].write_to_path(os.path.join(CERTS, "cert.pem"))
    for more in cert.cert_chain_pems[1:]:
        more.write_to_path(os.path.join(CERTS, "cert.pem"), append=True)


if sys.argv[1:] == ["certs"]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(CERTS, "ca.pem"))
    issue(ca)
    sys.exit(0)

import boto3  # noqa: E402 (only the check needs it)

ENDPOINT = os.environ["ENDPOINT"]
health = ENDPOINT + "/v1/health"


def trusting(ca_file):
    return ssl.create_default_context(cafile=ca_file)


def get(context):
    with urllib.request.urlopen(health, context=context, timeout=5) as answer:
        return answer.status


first_ca = os.path.join(CERTS, "ca.pem")
assert get(trusting(first_ca)) == 200
# A client that does not know the CA refuses weir's certificate.
try:
    get(ssl.create_default_context())
    raise AssertionError("an unknown CA was trusted")
except urllib.error.URLError as e:
    assert isinstance(e.reason, ssl.SSLCertVerificationError), e
# Plain HTTP to the TLS port gets no answer.
try:
    urllib.request.urlopen(ENDPOINT.replace("https://", "http://") + "/v1/health", timeout=5)
    raise AssertionError("plain HTTP was answered")
except (OSError, http.client.HTTPException):  # refused, reset, or a TLS alert instead of a status line
    pass
print("ok   urllib verifies the certificate")

k = boto3.client("kinesis", endpoint_url=ENDPOINT, region_name="us-east-1", verify=first_ca,
                 aws_access_key_id=os.environ["ACCESS_KEY_ID"], aws_secret_access_key=os.environ["SECRET_ACCESS_KEY"])
k.create_stream(StreamName="over-tls", ShardCount=1)
k.put_record(StreamName="over-tls", Data=b"secret", PartitionKey="k")
it = k.get_shard_iterator(StreamName="over-tls", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON")
assert [r["Data"] for r in k.get_records(ShardIterator=it["ShardIterator"])["Records"]] == [b"secret"]
print("ok   boto3 over TLS")

# A renewal from another CA: weir picks it up within seconds, without a restart.
second = trustme.CA()
second_ca = os.path.join(CERTS, "ca2.pem")
second.cert_pem.write_to_path(second_ca)
issue(second)
deadline = time.time() + 20
while True:
    try:
        assert get(trusting(second_ca)) == 200
        break
    except urllib.error.URLError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
print("ok   a renewed certificate is served without a restart")
print("PASS")
