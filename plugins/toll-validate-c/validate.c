// ABC Tolls line validation, a transformer written in C: checks each raw toll
// line (the station's CSV: transaction_id, event_time, station_id, lane,
// tag_id, customer_id, vehicle_class, amount_cents) field by field in one pass,
// without allocating per record, and passes well-formed lines on unchanged.
// A malformed line is set aside as processing-failed, naming the field at fault,
// so only clean lines reach the transforms and analytics after it.

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transformer.h"

typedef exports_weir_plugin_transform_outcome_t outcome_t;

static unsigned long long max_amount_cents = 100000;

static void say(weir_plugin_log_level_t level, const char *text) {
    transformer_string_t message;
    transformer_string_set(&message, text);
    weir_plugin_log_log(level, &message);
}

static bool parse_unsigned(const uint8_t *s, size_t len, unsigned long long *out) {
    if (len == 0 || len > 18) return false;
    unsigned long long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

static bool is_word(const uint8_t *s, size_t len) {
    if (len == 0 || len > 64) return false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        bool ok = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '-' || c == '_';
        if (!ok) return false;
    }
    return true;
}

// YYYY-MM-DDTHH:MM:SS[.f+]Z
static bool is_utc_time(const uint8_t *s, size_t len) {
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    if (len < 20 || s[len - 1] != 'Z') return false;
    for (size_t i = 0; i < 19; i++) {
        bool ok = shape[i] == 'd' ? (s[i] >= '0' && s[i] <= '9') : s[i] == (uint8_t)shape[i];
        if (!ok) return false;
    }
    if (len == 20) return true;
    if (s[19] != '.' || len == 21) return false;
    for (size_t i = 20; i < len - 1; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
    }
    return true;
}

// NULL if the line is well formed, else why not (into `why`).
static const char *check_line(const uint8_t *line, size_t len, char *why, size_t why_len) {
    const uint8_t *field[8];
    size_t field_len[8];
    size_t count = 0, start = 0;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || line[i] == ',') {
            if (count < 8) {
                field[count] = line + start;
                field_len[count] = i - start;
            }
            count++;
            start = i + 1;
        }
    }
    if (count != 8) {
        snprintf(why, why_len, "expected 8 comma-separated fields, found %zu", count);
        return why;
    }
    unsigned long long n;
    if (!is_word(field[0], field_len[0])) return "field 1 (transaction_id) must be letters, digits, - or _";
    if (!is_utc_time(field[1], field_len[1])) return "field 2 (event_time) must be an RFC 3339 UTC time, e.g. 2026-11-26T14:03:12.345Z";
    if (!parse_unsigned(field[2], field_len[2], &n) || n == 0) return "field 3 (station_id) must be a positive integer";
    if (!parse_unsigned(field[3], field_len[3], &n)) return "field 4 (lane) must be an integer";
    if (!is_word(field[4], field_len[4])) return "field 5 (tag_id) must be letters, digits, - or _";
    if (!is_word(field[5], field_len[5])) return "field 6 (customer_id) must be letters, digits, - or _";
    if (!parse_unsigned(field[6], field_len[6], &n) || n < 1 || n > 6) return "field 7 (vehicle_class) must be 1 to 6";
    if (!parse_unsigned(field[7], field_len[7], &n)) return "field 8 (amount_cents) must be a whole number of cents";
    if (n > max_amount_cents) {
        snprintf(why, why_len, "field 8 (amount_cents) %llu is above the plausible maximum of %llu", n, max_amount_cents);
        return why;
    }
    return NULL;
}

bool exports_weir_plugin_transform_init(exports_weir_plugin_transform_config_t *config, transformer_string_t *err) {
    bool ok = true;
    for (size_t i = 0; i < config->len && ok; i++) {
        transformer_string_t *key = &config->ptr[i].f0, *value = &config->ptr[i].f1;
        if (key->len == 16 && memcmp(key->ptr, "max-amount-cents", 16) == 0) {
            if (!parse_unsigned(value->ptr, value->len, &max_amount_cents)) {
                transformer_string_dup(err, "max-amount-cents must be a whole number of cents");
                ok = false;
            }
        }
    }
    weir_plugin_types_config_free(config);
    if (ok) say(WEIR_PLUGIN_LOG_LEVEL_DEBUG, "validating toll lines");
    return ok;
}

bool exports_weir_plugin_transform_transform(exports_weir_plugin_transform_batch_t *input,
                                             exports_weir_plugin_transform_transformed_t *ret,
                                             exports_weir_plugin_transform_error_t *err) {
    size_t records = input->payload_ends.len;
    // Every output is a copy of its input, so the input's sizes bound the output's.
    outcome_t *outcomes = calloc(records ? records : 1, sizeof(outcome_t));
    uint8_t *keys = malloc(input->keys.len ? input->keys.len : 1);
    uint8_t *payloads = malloc(input->payloads.len ? input->payloads.len : 1);
    uint32_t *key_ends = malloc(records ? records * sizeof(uint32_t) : 1);
    uint32_t *payload_ends = malloc(records ? records * sizeof(uint32_t) : 1);
    int64_t *times = malloc(records ? records * sizeof(int64_t) : 1);
    if (!outcomes || !keys || !payloads || !key_ends || !payload_ends || !times) {
        free(outcomes), free(keys), free(payloads), free(key_ends), free(payload_ends), free(times);
        weir_plugin_types_batch_free(input);
        // Not the records' fault, and it may pass: the host retries the batch.
        err->tag = WEIR_PLUGIN_TYPES_ERROR_TRANSIENT;
        transformer_string_dup(&err->val.transient, "out of memory");
        return false;
    }
    size_t out = 0, key_at = 0, payload_at = 0, key_start = 0, payload_start = 0;
    char why[160];
    for (size_t i = 0; i < records; i++) {
        size_t key_end = input->key_ends.ptr[i], payload_end = input->payload_ends.ptr[i];
        const uint8_t *line = input->payloads.ptr + payload_start;
        const char *reason = check_line(line, payload_end - payload_start, why, sizeof why);
        if (reason) {
            outcomes[i].tag = EXPORTS_WEIR_PLUGIN_TRANSFORM_OUTCOME_PROCESSING_FAILED;
            transformer_string_dup(&outcomes[i].val.processing_failed, reason);
        } else {
            outcomes[i].tag = EXPORTS_WEIR_PLUGIN_TRANSFORM_OUTCOME_OK;
            outcomes[i].val.ok = 1;
            memcpy(keys + key_at, input->keys.ptr + key_start, key_end - key_start);
            key_at += key_end - key_start;
            memcpy(payloads + payload_at, line, payload_end - payload_start);
            payload_at += payload_end - payload_start;
            key_ends[out] = key_at;
            payload_ends[out] = payload_at;
            times[out] = input->event_times.ptr[i];
            out++;
        }
        key_start = key_end;
        payload_start = payload_end;
    }
    weir_plugin_types_batch_free(input);
    ret->outcomes.ptr = outcomes;
    ret->outcomes.len = records;
    ret->output.keys.ptr = keys;
    ret->output.keys.len = key_at;
    ret->output.key_ends.ptr = key_ends;
    ret->output.key_ends.len = out;
    ret->output.event_times.ptr = times;
    ret->output.event_times.len = out;
    ret->output.payloads.ptr = payloads;
    ret->output.payloads.len = payload_at;
    ret->output.payload_ends.ptr = payload_ends;
    ret->output.payload_ends.len = out;
    ret->output.attributes.ptr = NULL;
    ret->output.attributes.len = 0;
    return true;
}
