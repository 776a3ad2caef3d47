"""ABC Tolls traffic monitoring, notifier half, in Python (world `notifier`).

The same contract as the Rust `traffic-monitor-alert`: reads
`traffic-monitor-count`'s results (run with a `minimums` reference table) and,
for each station whose count for a window is below its minimum (zero vehicles
for a silent station included), alerts the operators on every configured
channel, naming the station, the window, the count and the minimum. The
idempotency key `traffic|<station>|<window start>` makes each alert one per
channel, however often its batch is redone. An alert that a revised count
(late records) proves wrong is followed by one correction on the same
channels; the `alerts` state table remembers which windows were alerted.
"""

from componentize_py_types import Err

import weir
from wit_world import exports
from wit_world.imports import log, notify, state_table

ALERTED = b"alerted"
CORRECTED = b"corrected"


class Consume(exports.Consume):
    channels = ["operators"]
    recipient = "operators"
    alerts = "traffic-alerts"

    def init(self, config):
        config = weir.Config(config)
        try:
            channels = config.get_json("channels", ["operators"])
        except ValueError:
            channels = None
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise Err(f"channels must be a list of channel names, not {config.get('channels')}")
        if not channels:
            raise Err("channels names no channel: alerts would go nowhere")
        Consume.channels = channels
        Consume.recipient = config.get("recipient", "operators")
        Consume.alerts = config.get("alerts", "traffic-alerts")
        log.log(log.Level.DEBUG, f"alerting {', '.join(channels)}")

    def consume(self, input):
        for record in weir.records(input):
            try:
                count = record.json()
                station = str(count["station_id"])
                start, end = str(count["window_start"]), str(count["window_end"])
                vehicles = int(count["vehicles"])
                minimum = count.get("minimum")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise weir.bad_record(
                    record.index,
                    "not a traffic-monitor-count result (station_id, window_start, window_end, vehicles): "
                    f"{type(e).__name__} {e}",
                )
            if minimum is None:
                continue
            window = f"{station}|{start}"
            frm, to = clock(start), clock(end)
            if vehicles >= int(minimum):
                # A revised count: if it was alerted, say the alert was wrong, once.
                if state_table.get(Consume.alerts, window) == ALERTED:
                    subject = f"Station {station} recovered {frm}-{to}: {vehicles} vehicles, minimum {minimum} (correction)"
                    body = (
                        f"Correction: station {station} counted {vehicles} vehicles between {start} and {end} "
                        f"once its late records arrived; its minimum for that slot is {minimum}, so the earlier "
                        "alert for this window was wrong."
                    )
                    send_all(subject, body, f"traffic-corrected|{window}")
                    state_table.put(Consume.alerts, window, CORRECTED)
                continue
            if vehicles == 0:
                subject = f"Station {station} silent {frm}-{to}: no vehicles, minimum {minimum}"
            else:
                subject = f"Station {station} low {frm}-{to}: {vehicles} vehicles, minimum {minimum}"
            body = (
                f"Station {station} counted {vehicles} vehicles between {start} and {end}; "
                f"its minimum for that slot is {minimum}."
            )
            send_all(subject, body, f"traffic|{window}")
            if state_table.get(Consume.alerts, window) is None:
                state_table.put(Consume.alerts, window, ALERTED)


def send_all(subject, body, idempotency_key):
    """One message to every configured channel."""
    for channel in Consume.channels:
        notify.send(
            notify.Notification(
                channel=channel,
                recipient=Consume.recipient,
                subject=subject,
                body=body,
                idempotency_key=idempotency_key,
            )
        )


def clock(time):
    """`HH:MM` of an RFC 3339 time (the whole text if it is not one)."""
    return time[11:16] if len(time) >= 16 else time
