"""The static latent browser: which latents it picks, what it records for each pole, the files it writes, the page.

A tiny SAE whose encoder copies input coordinates into latents plants every code in advance: latent 3 fires
positively on rows 17, 42, 5 and negatively on rows 7, 30; no other latent ever fires negatively.
"""

import shutil
from types import SimpleNamespace

import pytest
import torch

from absae_lib import latent_browser
from absae_lib.features import scan_latents
from absae_lib.sae import SAE

D_IN, D_SAE, SEQ_LEN, N_ROWS = 8, 6, 5, 60
LATENT = 3
POSITIVE = {17: 5.0, 42: 4.0, 5: 3.0}
NEGATIVE = {7: -6.0, 30: -2.0}


class WordTokenizer:
    """Token i decodes to " t<i>"."""

    def decode(self, ids):
        return "".join(f" t{i}" for i in ids)


def identity_sae(architecture: str) -> SAE:
    """Pre-activations = the first D_SAE input coordinates; k = 2."""
    torch.manual_seed(0)
    sae = SAE(D_IN, D_SAE, architecture, k=2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(D_IN, D_SAE))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def planted():
    """(acts [N_ROWS, D_IN], tokens [n_seq, SEQ_LEN], positions) laid out like an ActivationStore."""
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(N_ROWS, D_IN, generator=g)  # small positive noise, far below the planted values
    for row, value in {**POSITIVE, **NEGATIVE}.items():
        x[row, LATENT] = value
    n_seq = N_ROWS // (SEQ_LEN - 1)
    tokens = torch.arange(n_seq * SEQ_LEN).view(n_seq, SEQ_LEN) + 100  # every token id distinct
    rows = torch.arange(N_ROWS)
    return x, tokens, (rows // (SEQ_LEN - 1), rows % (SEQ_LEN - 1) + 1)


def token_of_row(tokens, positions, row: int) -> str:
    return f"t{int(tokens[positions[0][row], positions[1][row]])}"


def fake_model(d_vocab: int = 50):
    g = torch.Generator().manual_seed(1)
    return SimpleNamespace(cfg=SimpleNamespace(d_model=D_IN, normalization_type="RMSPre"),
                           W_U=torch.randn(D_IN, d_vocab, generator=g), tokenizer=WordTokenizer(), ln_final=None)


def test_abstopk_record_holds_both_poles_in_order():
    x, tokens, positions = planted()
    sae = identity_sae("abstopk")
    data = latent_browser.browser_data({"abstopk": sae}, None, tokens, positions, WordTokenizer(), acts=x,
                                       n_latents=D_SAE, n_contexts=3)
    entry = data["saes"]["abstopk"]
    assert entry["signed"] and entry["label"] == "AbsTopK" and data["n_tokens"] == N_ROWS
    first = entry["latents"][0]
    assert first["id"] == LATENT  # the only latent with negative firings comes first
    codes = sae.encode(x).detach()
    assert first["n_pos"] == int((codes[:, LATENT] > 0).sum()) and first["n_neg"] == 2
    assert [c[3] for c in first["pos"]] == [5.0, 4.0, 3.0]
    assert [c[3] for c in first["neg"]] == [-6.0, -2.0]  # the negative pole, strongest first, not dropped
    assert [c[1] for c in first["neg"]] == [token_of_row(tokens, positions, r) for r in NEGATIVE]
    assert [c[1] for c in first["pos"]] == [token_of_row(tokens, positions, r) for r in POSITIVE]
    before, token, after, _ = first["neg"][0]
    assert before.endswith(" ") and not token.startswith(" ")  # the marked token carries no leading space
    assert all(not lat["neg"] and lat["n_neg"] == 0 for lat in entry["latents"][1:])


def test_topk_opposite_and_cross_sae_neighbours_are_the_planted_rows():
    x, tokens, positions = planted()
    topk, abstopk = identity_sae("topk"), identity_sae("abstopk")
    with torch.no_grad():
        topk.W_dec[1] = -topk.W_dec[0]  # one axis split over two TopK latents
        abstopk.W_dec[2] = topk.W_dec[0]  # the same direction as one AbsTopK latent
    data = latent_browser.browser_data({"topk": topk, "abstopk": abstopk}, None, tokens, positions, WordTokenizer(),
                                       acts=x, n_latents=D_SAE, n_neighbours=2)
    topk_latents = {lat["id"]: lat for lat in data["saes"]["topk"]["latents"]}
    assert [lat["id"] for lat in data["saes"]["topk"]["latents"]][:2] in ([0, 1], [1, 0])  # most antipodal first
    assert topk_latents[0]["opposite"][0] == [1, -1.0]
    assert topk_latents[1]["opposite"][0] == [0, -1.0]
    assert topk_latents[0]["nearest"]["abstopk"][0] == [2, 1.0]
    assert topk_latents[1]["nearest"]["abstopk"][0] == [2, -1.0]  # nearest by |cosine|, sign kept
    assert all(pair[0] != 0 for pair in topk_latents[0]["similar"])  # a row is never its own neighbour
    assert not data["saes"]["topk"]["signed"]


def test_selection_takes_fired_latents_only_and_respects_the_count():
    x, tokens, positions = planted()
    sae = identity_sae("abstopk")
    x[:, 5] = 0.0  # latent 5 never fires
    scan = scan_latents(sae, x, top_n=3, progress=False)
    chosen = latent_browser.select_latents(sae, scan, 4)
    assert len(chosen) == len(set(chosen)) == 4 and chosen[0] == LATENT
    assert 5 not in latent_browser.select_latents(sae, scan, D_SAE)
    with pytest.raises(ValueError, match="positive int"):
        latent_browser.select_latents(sae, scan, 0)
    with pytest.raises(ValueError, match="scan of this SAE"):
        latent_browser.select_latents(SAE(D_IN, D_SAE + 1, "abstopk", k=2), scan, 3)


def test_bad_input_is_named():
    x, tokens, positions = planted()
    sae = identity_sae("abstopk")
    with pytest.raises(ValueError, match="positions describe"):
        latent_browser.browser_data({"a": sae}, None, tokens, (positions[0][:10], positions[1][:10]),
                                    WordTokenizer(), acts=x)
    with pytest.raises(ValueError, match="no scan"):
        latent_browser.browser_data({"a": sae}, None, tokens, positions, WordTokenizer())
    with pytest.raises(ValueError, match="tokenizer"):
        latent_browser.browser_data({"a": sae}, None, tokens, positions, None, acts=x)
    with pytest.raises(ValueError, match="saes is empty"):
        latent_browser.browser_data({}, None, tokens, positions, WordTokenizer(), acts=x)


def test_write_round_trips_and_leaves_no_temporary_files(tmp_path):
    x, tokens, positions = planted()
    saes = {"topk": identity_sae("topk"), "abstopk": identity_sae("abstopk")}
    scans = {name: scan_latents(sae, x, top_n=8, progress=False) for name, sae in saes.items()}
    path = latent_browser.write(tmp_path / "lb", saes, scans, tokens, positions, WordTokenizer(), model=fake_model(),
                                lens_n=4)
    assert sorted(p.name for p in path.parent.iterdir()) == ["browser.js", "index.html", "latents.js"]
    expected = latent_browser.browser_data(saes, scans, tokens, positions, WordTokenizer(), model=fake_model(),
                                           lens_n=4)
    assert latent_browser.read(path.parent) == expected
    record = expected["saes"]["abstopk"]["latents"][0]
    assert len(record["lens_pos"]) == len(record["lens_neg"]) == 4
    page = (path.parent / "index.html").read_text()
    assert '<script src="latents.js">' in page and '<script src="browser.js">' in page
    with pytest.raises(ValueError, match="not a latent-browser data file"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "latents.js").write_text("{}")
        latent_browser.read(tmp_path / "bad")


@pytest.mark.skipif(not (shutil.which("chromedriver") and shutil.which("chromium")),
                    reason="needs Debian's chromium and chromium-driver (make check-book installs them)")
def test_page_shows_both_poles_in_chromium(tmp_path):
    """The written page, opened in headless Chromium: the AbsTopK card lists both poles' contexts."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    x, tokens, positions = planted()
    saes = {"topk": identity_sae("topk"), "abstopk": identity_sae("abstopk")}
    folder = latent_browser.write(tmp_path, saes, None, tokens, positions, WordTokenizer(), acts=x).parent
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        chrome.get((folder / "index.html").as_uri())
        text = chrome.find_element("id", "absae-latent-browser").text
        errors = [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
        marks = [[m.text for m in chrome.find_elements("css selector", f"#absae-latent-browser td:nth-child({i}) mark")]
                 for i in (1, 2)]  # the + pole's cell, the − pole's cell
    finally:
        chrome.quit()
    assert not errors
    assert f"AbsTopK latent #{LATENT}" in text and "−d: 2 firings" in text
    neg_tokens = [token_of_row(tokens, positions, r) for r in NEGATIVE]
    pos_tokens = [token_of_row(tokens, positions, r) for r in POSITIVE]
    assert marks[0][:3] == pos_tokens and marks[1] == neg_tokens
