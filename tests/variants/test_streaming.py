"""titans.streaming: `stream_segments` is the one streaming loop; `stream` and the benchmarks run through it."""

import torch
from titans_tiny import patched

from titans.compat import output_cache
from titans.streaming import stream, stream_segments


def test_stream_segments_yields_every_segment_and_carries_the_cache(base, ids):
    model = patched(base, "mag").eval()
    with torch.no_grad():
        whole = model(ids).logits  # [B, 23, V]
    seen = list(stream_segments(model, ids, 5, logits_to_keep=0))
    assert [start for start, _ in seen] == [0, 5, 10, 15, 20]
    streamed = torch.cat([out.logits for _, out in seen], dim=1)
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)
    cache, last = stream(model, ids, 5, return_logits=True)
    torch.testing.assert_close(last, seen[-1][1].logits[:, -1], atol=1e-5, rtol=0)
    assert cache.get_seq_length() == output_cache(seen[-1][1]).get_seq_length()
