// AWS Signature Version 4 in the browser (WebCrypto), so that the dashboard's
// requests are authenticated like any other client's: with an access key of
// the pipeline's manifest, checked by the same policy.
"use strict";

const SigV4 = (() => {
  const encoder = new TextEncoder();

  const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");

  const sha256 = async (text) => hex(await crypto.subtle.digest("SHA-256", encoder.encode(text)));

  const hmac = async (key, text) => {
    const raw = typeof key === "string" ? encoder.encode(key) : key;
    const imported = await crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    return crypto.subtle.sign("HMAC", imported, encoder.encode(text));
  };

  // RFC 3986 unreserved characters stay; everything else is %XX (and `/` too, except in paths).
  const uriEncode = (text, keepSlash) =>
    Array.from(encoder.encode(text), (byte) => {
      const c = String.fromCharCode(byte);
      if (/[A-Za-z0-9\-_.~]/.test(c) || (keepSlash && c === "/")) return c;
      return "%" + byte.toString(16).toUpperCase().padStart(2, "0");
    }).join("");

  const canonicalQuery = (search) =>
    search
      .replace(/^\?/, "")
      .split("&")
      .filter((pair) => pair !== "")
      .map((pair) => {
        const [name, value = ""] = pair.split("=");
        const decode = (s) => decodeURIComponent(s.replace(/\+/g, " "));
        return [uriEncode(decode(name), false), uriEncode(decode(value), false)];
      })
      .sort((a, b) => (a[0] === b[0] ? (a[1] < b[1] ? -1 : 1) : a[0] < b[0] ? -1 : 1))
      .map(([name, value]) => `${name}=${value}`)
      .join("&");

  // The headers that sign `method url` with `body` (a string) by `key` ({id, secret}).
  const sign = async (key, method, url, body) => {
    const target = new URL(url, window.location.href);
    const amzDate = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
    const day = amzDate.slice(0, 8);
    const region = "us-east-1";
    const service = "weir";
    const payloadHash = await sha256(body || "");
    const signedHeaders = "host;x-amz-content-sha256;x-amz-date";
    const canonicalHeaders = `host:${target.host}\nx-amz-content-sha256:${payloadHash}\nx-amz-date:${amzDate}\n`;
    const canonicalRequest = [
      method,
      uriEncode(decodeURIComponent(target.pathname), true),
      canonicalQuery(target.search),
      canonicalHeaders,
      signedHeaders,
      payloadHash,
    ].join("\n");
    const scope = `${day}/${region}/${service}/aws4_request`;
    const stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, await sha256(canonicalRequest)].join("\n");
    let signingKey = await hmac(`AWS4${key.secret}`, day);
    for (const part of [region, service, "aws4_request"]) signingKey = await hmac(signingKey, part);
    const signature = hex(await hmac(signingKey, stringToSign));
    return {
      "x-amz-date": amzDate,
      "x-amz-content-sha256": payloadHash,
      authorization: `AWS4-HMAC-SHA256 Credential=${key.id}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`,
    };
  };

  return { sign };
})();
