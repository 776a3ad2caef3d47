"""A KCL record processor (the MultiLangDaemon runs it, one process per shard).

Appends `<shard>\t<sequence number>\t<data>` per record to $KCL_OUT and
checkpoints after each batch. stdout belongs to the daemon's protocol.
"""

import os
import sys
import time

from amazon_kclpy import kcl
from amazon_kclpy.checkpoint_error import CheckpointError
from amazon_kclpy.v3 import processor

OUT = os.environ["KCL_OUT"]


class Processor(processor.RecordProcessorBase):
    def __init__(self):
        self.shard = None

    def initialize(self, initialize_input):
        self.shard = initialize_input.shard_id

    def checkpoint(self, checkpointer, sequence_number=None):
        for attempt in range(5):
            try:
                checkpointer.checkpoint(sequence_number)
                return
            except CheckpointError as e:
                sys.stderr.write(f"checkpoint of {self.shard}: {e.value}\n")
                if e.value not in ("ThrottlingException", "KinesisClientLibDependencyException"):
                    return
                time.sleep(0.5 * (attempt + 1))

    def process_records(self, process_records_input):
        records = process_records_input.records
        if not records:
            return
        lines = "".join(f"{self.shard}\t{r.sequence_number}\t{r.binary_data.decode()}\n" for r in records)
        # One append per batch: the shards' processes share the file.
        with open(OUT, "a") as out:
            out.write(lines)
            out.flush()
            os.fsync(out.fileno())
        self.checkpoint(process_records_input.checkpointer, records[-1].sequence_number)

    def lease_lost(self, lease_lost_input):
        pass

    def shard_ended(self, shard_ended_input):
        self.checkpoint(shard_ended_input.checkpointer)

    def shutdown_requested(self, shutdown_requested_input):
        self.checkpoint(shutdown_requested_input.checkpointer)


if __name__ == "__main__":
    kcl.KCLProcess(Processor()).run()
