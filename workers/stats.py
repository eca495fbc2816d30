"""Summary statistics of per-batch timings, without numpy (the workers are stdlib + torch)."""
import math


def percentile(sorted_values, q):
    """The q-th percentile (0..100) with linear interpolation, as numpy's default."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = (len(sorted_values) - 1) * (q / 100.0)
    low = int(math.floor(position))
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def summarize_ms(seconds, batch_size):
    """Mean, median, p10, p90, std, min, max in ms per batch, and sequences per second.

    ``std`` is the population standard deviation (numpy's default, which the
    seed's rnn_benchmarks used).
    """
    if not seconds:
        raise ValueError("no timed batches to summarize")
    ms = sorted(s * 1000.0 for s in seconds)
    n = len(ms)
    mean = sum(ms) / n
    variance = sum((v - mean) ** 2 for v in ms) / n
    median = percentile(ms, 50)
    return {
        "ms_per_batch_mean": mean,
        "ms_per_batch_median": median,
        "ms_per_batch_p10": percentile(ms, 10),
        "ms_per_batch_p90": percentile(ms, 90),
        "ms_per_batch_std": math.sqrt(variance),
        "ms_per_batch_min": ms[0],
        "ms_per_batch_max": ms[-1],
        # Throughput over the timed batches: total sequences / total time.
        "sequences_per_second": batch_size / (mean / 1000.0) if mean > 0 else None,
        "batches_timed": n,
    }
