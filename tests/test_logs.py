"""User ids in logs: a short keyed hash that correlates lines without naming the user."""

from __future__ import annotations

import re

from pydantic import SecretStr

from linkwatch.logs import user_ref, user_ref_key
from linkwatch.settings import Settings

REF = re.compile(r"u#[0-9a-f]{16}")


def test_a_user_ref_is_short_stable_and_does_not_contain_the_id() -> None:
    key = user_ref_key(Settings())
    ref = user_ref("u0042", key)
    assert REF.fullmatch(ref)
    assert "0042" not in ref
    # Stable: the same user gives the same ref in every line, process and restart.
    assert user_ref("u0042", user_ref_key(Settings())) == ref
    # Distinct users stay apart, so an operator can follow one of them.
    refs = {user_ref(f"u{n:04d}", key) for n in range(10_000)}
    assert len(refs) == 10_000


def test_the_key_comes_from_the_secret_when_set_and_from_the_app_id_otherwise() -> None:
    derived = user_ref_key(Settings(app_id="shop"))
    assert user_ref_key(Settings(app_id="shop")) == derived
    assert user_ref_key(Settings(app_id="other")) != derived
    secret = Settings(app_id="shop", log_hash_key=SecretStr("k" * 100))  # longer than blake2b takes
    assert user_ref_key(secret) != derived
    # With a secret, the app id no longer matters: environments sharing the secret correlate.
    same_secret = Settings(app_id="other", log_hash_key=SecretStr("k" * 100))
    assert user_ref_key(same_secret) == user_ref_key(secret)
    assert user_ref("u1", user_ref_key(secret)) != user_ref("u1", derived)


def test_without_the_secret_a_dictionary_of_ids_does_not_reverse_the_refs() -> None:
    """What a secret key buys: whoever reads the logs and knows the app id (but not the key)
    can hash every candidate id with the derivable key and find no match."""
    secret = Settings(app_id="shop", log_hash_key=SecretStr("correct horse battery staple"))
    logged = user_ref("u0042", user_ref_key(secret))
    guessed_key = user_ref_key(Settings(app_id="shop"))
    dictionary = {user_ref(f"u{n:04d}", guessed_key): f"u{n:04d}" for n in range(10_000)}
    assert logged not in dictionary
    # ...while with the derived key the same attack works: hence the setting's advice.
    assert dictionary[user_ref("u0042", guessed_key)] == "u0042"
