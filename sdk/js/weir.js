// weir's JavaScript plugin helpers: records and configuration out of the WIT
// types, and output batches back in. componentize-js bundles this file into the
// plugin: sdk/toolchains/componentize-js.sh stages it beside the plugin's files as ./weir.js.

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/**
 * The records of a `types.batch`: { index, key, eventTime (BigInt ms), payload
 * (Uint8Array), attributes ({ name: value }) }.
 */
export function* records(batch) {
  const attributes = new Map();
  for (const a of batch.attributes) {
    if (!attributes.has(a.index)) attributes.set(a.index, {});
    attributes.get(a.index)[a.name] = a.value;
  }
  let keyStart = 0;
  let payloadStart = 0;
  for (let i = 0; i < batch.keyEnds.length; i++) {
    const keyEnd = batch.keyEnds[i];
    const payloadEnd = batch.payloadEnds[i];
    yield {
      index: i,
      key: decoder.decode(batch.keys.subarray(keyStart, keyEnd)),
      eventTime: batch.eventTimes[i],
      payload: batch.payloads.subarray(payloadStart, payloadEnd),
      attributes: attributes.get(i) ?? {},
    };
    keyStart = keyEnd;
    payloadStart = payloadEnd;
  }
}

/**
 * An aggregator's result's window and revision, from its attributes:
 * { start, end (ms), revision } (revision 0 on time, 1, 2, ... for the
 * revisions late records caused), or null for a record that is not one.
 */
export function pane(record) {
  const a = record.attributes ?? {};
  const [start, end, revision] = ['weir-window-start', 'weir-window-end', 'weir-revision'].map((n) => Number(a[n]));
  return [start, end, revision].every(Number.isInteger) ? { start, end, revision } : null;
}

/**
 * Errors to throw from `transform`, `fold`, `emit` or `consume` (`types.error`):
 * `throw badRecord(record.index, 'why')` sets that record aside in the dead
 * letters and the host calls again with the others; `throw transient('why')`
 * has the batch retried after a backoff; `throw failed('why')` has it tried
 * again, then the stage's on-error policy applies. (`init` throws a string.)
 */
export function badRecord(index, reason) {
  return { tag: 'bad-record', val: { index, reason } };
}

/** A failure that may pass: the batch is retried after a backoff. */
export function transient(message) {
  return { tag: 'transient', val: message };
}

/** A failure pinned on no record: tried again, then the stage's on-error policy. */
export function failed(message) {
  return { tag: 'failed', val: message };
}

/** A payload as text. */
export function text(payload) {
  return decoder.decode(payload);
}

/** Collects output records into a `types.batch`. */
export class BatchBuilder {
  constructor() {
    this.keys = [];
    this.keyEnds = [];
    this.eventTimes = [];
    this.payloads = [];
    this.payloadEnds = [];
    this.keyLength = 0;
    this.payloadLength = 0;
  }

  /** Adds a record; `payload` is a string or a Uint8Array. */
  push(key, eventTime, payload) {
    const k = encoder.encode(key);
    const p = typeof payload === 'string' ? encoder.encode(payload) : payload;
    this.keys.push(k);
    this.payloads.push(p);
    this.keyLength += k.length;
    this.payloadLength += p.length;
    this.keyEnds.push(this.keyLength);
    this.payloadEnds.push(this.payloadLength);
    this.eventTimes.push(BigInt(eventTime));
  }

  build() {
    return {
      keys: concat(this.keys, this.keyLength),
      keyEnds: Uint32Array.from(this.keyEnds),
      eventTimes: BigInt64Array.from(this.eventTimes),
      payloads: concat(this.payloads, this.payloadLength),
      payloadEnds: Uint32Array.from(this.payloadEnds),
      attributes: [],
    };
  }
}

function concat(parts, length) {
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * A stage's `config` as an object: strings arrive verbatim, other TOML values
 * as JSON text (`json(name)` parses them, throwing a message that names the setting).
 */
export class Config {
  constructor(pairs) {
    this.values = new Map(pairs);
  }

  get(name, fallback) {
    return this.values.has(name) ? this.values.get(name) : fallback;
  }

  json(name, fallback) {
    if (!this.values.has(name)) return fallback;
    try {
      return JSON.parse(this.values.get(name));
    } catch {
      throw `${name} must be a TOML array, table, number or boolean, not ${this.values.get(name)}`;
    }
  }
}

/** The states of a `types.states`, one Uint8Array per group (empty: no records yet). */
export function states(flat) {
  const out = [];
  let start = 0;
  for (const end of flat.ends) {
    out.push(flat.bytes.subarray(start, end));
    start = end;
  }
  return out;
}

/** A `types.states` holding `items` (strings or Uint8Arrays), in order. */
export function packStates(items) {
  const parts = items.map((item) => (typeof item === 'string' ? encoder.encode(item) : item));
  const ends = [];
  let length = 0;
  for (const part of parts) {
    length += part.length;
    ends.push(length);
  }
  return { bytes: concat(parts, length), ends: Uint32Array.from(ends) };
}
