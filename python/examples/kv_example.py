"""TransferQueue's KV interface example (kv-interface-pr.txt), written against TQ.

Run a cluster first (bin/tq serve), then: python3 examples/kv_example.py
"""

import numpy as np
import tq

tq.init()  # $TQ_ADDRESS, else tcp://127.0.0.1:7370; the token from $TQ_TOKEN or ~/.local/state/tq/token

batch_input_ids = np.array([[4, 5, 6], [7, 8, 9], [10, 11, 12], [13, 14, 15]])
data_batch = {"input_ids": batch_input_ids, "attention_mask": np.ones_like(batch_input_ids)}

keys = ["1_0", "1_1", "1_2", "2_0"]  # 4 keys for 4 samples
tags = [{"global_steps": 1, "status": "running", "model_version": 1} for _ in range(len(keys))]
partition_id = "test"
tq.kv_batch_put(keys=keys, partition_id=partition_id, fields=data_batch, tags=tags)

# list all keys and tags: {partition: {key: tags}}
listed = tq.kv_list(partition_id=partition_id)[partition_id]
for k, t in listed.items():
    print(f"    - key='{k}' | tag={t}")

# retrieve all data
retrieved_all = tq.kv_batch_get(keys=list(listed), partition_id=partition_id)
print(f"  Fields: {list(retrieved_all.keys())}")

# one key: a new column, and a tag merged into its tags
tq.kv_put("1_0", partition_id, fields={"reward": np.float32(0.5)}, tag={"status": "scored"})
print(tq.kv_batch_get(["1_0"], partition_id, select_fields=["reward"]))
tq.kv_clear(keys, partition_id)
tq.close()
