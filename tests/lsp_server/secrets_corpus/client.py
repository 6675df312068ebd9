"""Clients for the partner APIs the reporting job talks to."""

from __future__ import annotations

import anthropic
import openai
import requests
from huggingface_hub import login
from requests.auth import HTTPBasicAuth

REPORTS_URL = "https://reports.partner.example.com/api/v3"
API_KEY = "mxh1xLzXtUGOtGiYvkeTaAvbZ4uaMMPlVFsL0tRqxLc"
openai.api_key = "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"
claude = anthropic.Anthropic(api_key="sk-ant-api03-Vs2IACJ2kDRbeBZYyPcPihLOqZFANjf6gQU4f6_s6fXFCv02wVsB7JiepyoIfSA9xtbO1u8gIhHH0GDUqqrJNOmK-ZIGiAA")
login(token="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")

session = requests.Session()
session.headers.update({"X-API-Key": "6dJ5fABlIYb30n7ug1SSL6ka7d13l2FK-", "Accept": "application/json"})


def fetch_report(report_id: str) -> dict:
    response = session.get(f"{REPORTS_URL}/reports/{report_id}", auth=("svc-reports", "T3LZRE.mJE~GsCmg"))
    response.raise_for_status()
    return response.json()


def legacy_export() -> bytes:
    auth = HTTPBasicAuth("exporter", "CZD3DP1tEQYj0eTWP4QI")
    return requests.get("https://legacy.example.com/export.csv", auth=auth, timeout=30).content


def post_metrics(rows: list[dict]) -> None:
    headers = {"Authorization": "Bearer AA3Vg4iPcZbIhLOc-6SERRiyzfxxmtjRp2yZ-8dWKcc"}
    requests.post("https://metrics.example.com/v1/rows", json=rows, headers=headers, timeout=10)


def basic_headers() -> dict[str, str]:
    return {"Authorization": "Basic cmVwb3J0czpvYmJETnguazhzVm81VnZmdGw0"}


def alert(text: str) -> None:
    requests.post("https://hooks.slack.com/services/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", json={"text": text}, timeout=5)


SQUARE_APPLICATION_SECRET = "sq0csp-xCkW7HwU5yPzxameLqt8ydEOJBwDMGEuFN7VR63mAYh"
POSTMAN_API_KEY = "PMAK-68589b1f838d586a3c82a559-2716b0ce525ca6f51d9df0b3192de8d383"
ARTIFACTORY_API_KEY = "AKCp8pI3WurRgwpj4C9X9e0QTzV6kvjzSvbuVXXr1ytAISbk75ibC8p79rbPwDclAhtcI9TBQ"
GITHUB_APP_TOKEN = "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"
AZURE_CLIENT_SECRET = "kSG3Q~uK9cvHYrHMJhOMNiX-B2uCAroGnrzf-EoL"
ACCESS_JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiAiNjNlNzc1N2MzODY2ZmY2ZjQxNWEzNDRlIiwgInJvbGUiOiAiYWRtaW4iLCAiaWF0IjogMTcyNTg5Nzk2OH0.R7PP2pXPnZvq6zdsIK_rPYS7EMlbLY6cbdupSa1drtR"
ADMIN_PASSWORD = "RPz9lLf_88x2i.U_"
