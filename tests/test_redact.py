"""Redaction of personal data before a served answer leaves the pod (components/data/redact.py):
positive and negative examples per kind, the Luhn check, the choice of kinds."""

from __future__ import annotations

import pytest

from selfguided.components.data.redact import REDACTION_KINDS, Redactor, luhn_ok, parse_kinds, redact

VISA = "4111 1111 1111 1111"  # a Luhn-valid test card number


@pytest.mark.parametrize("text, expected", [
    ("메일은 hong.gildong+cv@example.co.kr 로 주세요", "메일은 [EMAIL] 로 주세요"),
    ("contact: a_b@mail-server.com.", "contact: [EMAIL]."),
    ("주민번호 900101-1234567 입니다", "주민번호 [RRN] 입니다"),
    ("외국인 851231-5123456", "외국인 [RRN]"),
    ("RRN 020229 3123456", "RRN [RRN]"),
    (f"카드 {VISA} 로 결제", "카드 [CARD] 로 결제"),
    ("카드 4111-1111-1111-1111", "카드 [CARD]"),
    ("amex 378282246310005", "amex [CARD]"),
    ("13 digits 4222222222222", "13 digits [CARD]"),
    ("휴대폰 010-1234-5678 로 연락", "휴대폰 [PHONE] 로 연락"),
    ("01012345678", "[PHONE]"),
    ("010 1234 5678", "[PHONE]"),
    ("010.1234.5678", "[PHONE]"),
    ("서울 02-123-4567, 경기 031-1234-5678", "서울 [PHONE], 경기 [PHONE]"),
    ("인터넷전화 070-1234-5678", "인터넷전화 [PHONE]"),
    ("해외에서 +82 10-1234-5678 로", "해외에서 [PHONE] 로"),
    ("+82-2-123-4567", "[PHONE]"),
    ("+821012345678", "[PHONE]"),
])
def test_personal_data_is_replaced(text, expected):
    assert redact(text)[0] == expected


@pytest.mark.parametrize("text", [
    "2024-05-01 에 만나요",                 # a date
    "가격은 1,250,000원입니다",             # a price
    "주문번호 4111111111111112",            # 16 digits, Luhn fails
    "1234567890123",                        # 13 digits, Luhn fails: not a card
    "제품 코드 991332-1234567",             # month 13: not an RRN
    "991231-9234567",                       # 9 is no RRN's seventh digit
    "버전 1.2.3, 전화 없음",
    "010-1234.5678",                        # mixed separators: not written as a number
    "2019-2023 매출 12345678",
    "user at example dot com",
    "12-3456-7890",                         # no leading trunk 0
    "접수번호 0101234567890",               # too long for a phone, and no card (13 digits, Luhn fails)
    "4111-1111 1111-1111",                  # mixed separators: not written as a card number
])
def test_ordinary_text_is_left_alone(text):
    out, counts = redact(text)
    assert out == text and not counts


def test_a_phone_number_followed_by_a_number_is_a_phone_number():
    # 010-1234-5678 100 is 14 Luhn-valid digits; it is a phone number and a number, not a card
    assert luhn_ok("01012345678100")
    assert redact("010-1234-5678 100")[0] == "[PHONE] 100"


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112") and not luhn_ok("1234567890123")


def test_counts_and_kinds():
    text = f"a@b.io, 010-1111-2222, 900101-1234567, {VISA}, c@d.io"
    out, counts = redact(text)
    assert out == "[EMAIL], [PHONE], [RRN], [CARD], [EMAIL]"
    assert counts == {"email": 2, "phone": 1, "rrn": 1, "card": 1}
    only_mail = Redactor(("email",))
    assert only_mail.text(text) == f"[EMAIL], 010-1111-2222, 900101-1234567, {VISA}, [EMAIL]"
    assert only_mail.counts == {"email": 2}
    assert Redactor(()).text(text) == text


def test_json_values_are_redacted_inside():
    counts = __import__("collections").Counter()
    messages = [{"role": "user", "content": "전화 010-1234-5678"},
                {"role": "user", "content": [{"type": "text", "text": "x@y.kr"}]}]
    out = Redactor().value(messages, counts)
    assert out == [{"role": "user", "content": "전화 [PHONE]"},
                   {"role": "user", "content": [{"type": "text", "text": "[EMAIL]"}]}]
    assert sum(counts.values()) == 2 and messages[0]["content"] == "전화 010-1234-5678"  # input untouched


def test_parse_kinds():
    assert parse_kinds("all") == REDACTION_KINDS
    assert parse_kinds("none") == () and parse_kinds("") == ()
    assert parse_kinds("phone, email") == ("email", "phone")
    with pytest.raises(ValueError, match="unknown redaction kind.*passport"):
        parse_kinds("email,passport")
