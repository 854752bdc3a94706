"""Memory per image is bounded by the decode budget, not by the picture: a subprocess fetches and
prepares pictures just under the pixel guard and gzip bombs, many threads at once, and reports the
peak of its resident memory."""

import json
import subprocess
import sys
import textwrap

from PIL import Image

from smartgo_analytics.core.imaging import DECODE_MEMORY_BUDGET, MAX_PIXELS

MEASURE = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from smartgo_analytics.core.imaging import PROCESS_DECODE_BUDGET, BadImage, prepare_for
    from smartgo_analytics.core.models.titan import MODEL as TITAN
    from smartgo_analytics.resources.images import ImageFetcher, ImageFetchError
    from smartgo_analytics_tests import servers

    big, count = open(sys.argv[1], "rb").read(), int(sys.argv[2])
    state = servers.CdnState()
    state.images.update({f"/big-{n}.png": big for n in range(count)})
    cdn = servers.hostile_cdn(state)
    servers.gzip_bomb()
    base = f"http://localhost:{cdn.server_port}"
    urls = [f"{base}/big-{n}.png" for n in range(count)] + [f"{base}/gzip-bomb.png"] * count
    fetcher = ImageFetcher(allowlist=["localhost"])

    def one(url):
        try:
            return prepare_for(fetcher.fetch(url).data, TITAN.images).width
        except (BadImage, ImageFetchError) as error:
            return str(error)

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    peak, done = [rss()], threading.Event()

    def sample():  # the resident size every 5 ms while the threads work
        while not done.is_set():
            peak.append(rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(len(urls)) as pool:
        results = list(pool.map(one, urls))
    done.set()
    sampler.join()
    print(json.dumps({"results": results, "grew_mib": (max(peak) - peak[0]) / 2**20,
                      "most_held_mib": PROCESS_DECODE_BUDGET.most_held / 2**20}))
    """
)


def measure(path, count: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(count)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_concurrent_worst_case_images_stay_within_the_decode_budget(tmp_path):
    # The largest picture the decode budget admits (its pixels and a copy): about 96 MiB of RGB.
    side = int((DECODE_MEMORY_BUDGET / 6) ** 0.5) - 10
    assert side**2 < MAX_PIXELS
    path = tmp_path / "big.png"
    Image.new("RGB", (side, side), (30, 120, 200)).save(path, format="PNG")
    assert path.stat().st_size < 10 * 2**20

    report = measure(path, count=4)  # 4 such pictures and 4 gzip bombs, 8 threads at once

    # Each prepared for Titan: shrunk by whole pixels to the largest side within 2048.
    factor = -(-side // 2048)
    assert report["results"][:4] == [-(-side // factor)] * 4
    assert all("too large" in r for r in report["results"][4:])
    budget_mib = DECODE_MEMORY_BUDGET / 2**20
    assert 0 < report["most_held_mib"] <= budget_mib
    # Four at once would take 768 MiB of decoded pixels; the budget lets them through in turns.
    assert report["grew_mib"] < budget_mib + 160, report
    print(
        f"peak grew {report['grew_mib']:.0f} MiB; decodes held at most {report['most_held_mib']:.0f} MiB"
    )
