"""seq_copy's config schema: torch-free, read by the worker and by the host's grid check.

Every key a grid may set, with its type, default and bounds (workers.config.Field); the
keys every workload takes (device, seed, num_threads, ...) are added by versweep.
"""
from workers.config import Field
from workers.protocol import BadConfig

SCHEMA = {
    # The recurrent cell under test.
    "cell": Field("str", "lstm", choices=("lstm", "gru")),
    "hidden_size": Field("int", 32, positive=True, maximum=4096),
    # Symbols 1..vocab-1 are copied; 0 is the "now repeat it" marker.
    "vocab": Field("int", 8, minimum=3, maximum=1000),
    "seq_len": Field("int", 8, positive=True, maximum=1000),
    "batch_size": Field("int", 32, positive=True, maximum=4096),
    "steps": Field("int", 200, positive=True, maximum=1000000),
    # A `metric` event every this many steps.
    "report_every": Field("int", 50, positive=True),
    "learning_rate": Field("float", 0.01, positive=True),
}


def check(config):
    """Cross-key checks, on the resolved config (every default filled in)."""
    if config["report_every"] > config["steps"]:
        raise BadConfig("config key 'report_every' (%d) is more than 'steps' (%d): no metric "
                        "would ever be reported" % (config["report_every"], config["steps"]))
