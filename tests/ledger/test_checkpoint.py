"""Checkpoints as C2SP signed notes: the published example, key formats, the note
verification rules, the checkpoint body format, and checkpoints kept by the store."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import merkle
from ledger.checkpoint import (
    MAX_NOTE_SIGNATURES,
    MAX_NOTE_SIZE_BYTES,
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    checkpoint_from_note,
    compute_key_id,
    generate_key_pair,
    open_note,
    sign_checkpoint,
    sign_note,
    split_note,
    verify_checkpoint,
)
from ledger.errors import (
    InvalidKeyError,
    MalformedCheckpointError,
    MalformedNoteError,
    NoteSignatureError,
    UnverifiedNoteError,
)
from ledger.store import LedgerStore
from tests.ledger.vectors import SIGNED_NOTE_EXAMPLE

ORIGIN = "example.com/decisions"
ROOT = bytes(range(32))


# --- the C2SP signed-note example from the shared vectors ---------------------------------------


def test_example_verifier_key_parses_to_the_published_key() -> None:
    verifier = NoteVerifier.from_vkey(SIGNED_NOTE_EXAMPLE["vkey"])
    assert verifier.name == SIGNED_NOTE_EXAMPLE["key_name"]
    assert f"{verifier.key_id:08x}" == SIGNED_NOTE_EXAMPLE["key_id_hex"]
    public_key = bytes.fromhex(SIGNED_NOTE_EXAMPLE["ed25519_public_key_hex"])
    assert compute_key_id(SIGNED_NOTE_EXAMPLE["key_name"], public_key) == int(SIGNED_NOTE_EXAMPLE["key_id_hex"], 16)
    assert verifier.vkey() == SIGNED_NOTE_EXAMPLE["vkey"]


def test_example_note_verifies() -> None:
    verifier = NoteVerifier.from_vkey(SIGNED_NOTE_EXAMPLE["vkey"])
    assert open_note(SIGNED_NOTE_EXAMPLE["full_note"], [verifier]) == SIGNED_NOTE_EXAMPLE["note_text"]
    assert open_note(SIGNED_NOTE_EXAMPLE["full_note"].encode("utf-8"), [verifier]) == SIGNED_NOTE_EXAMPLE["note_text"]
    text, signatures = split_note(SIGNED_NOTE_EXAMPLE["full_note"])
    assert SIGNED_NOTE_EXAMPLE["full_note"] == text + "\n" + SIGNED_NOTE_EXAMPLE["signature_line"] + "\n"
    assert [name for name, _ in signatures] == [SIGNED_NOTE_EXAMPLE["key_name"]]


def test_example_note_with_altered_text_is_rejected() -> None:
    verifier = NoteVerifier.from_vkey(SIGNED_NOTE_EXAMPLE["vkey"])
    forged = SIGNED_NOTE_EXAMPLE["full_note"].replace("example message", "examp1e message")
    with pytest.raises(NoteSignatureError):
        open_note(forged, [verifier])


# --- keys ------------------------------------------------------------------------------------------


def test_generated_key_pair_round_trips() -> None:
    skey, vkey = generate_key_pair(ORIGIN)
    assert skey.startswith(f"PRIVATE+KEY+{ORIGIN}+")
    signer = NoteSigner.from_skey(skey)
    assert signer.skey() == skey
    assert signer.verifier().vkey() == vkey
    verifier = NoteVerifier.from_vkey(vkey)
    assert (verifier.name, verifier.key_id) == (ORIGIN, signer.key_id)
    assert open_note(sign_note("hello\n", [signer]), [verifier]) == "hello\n"


def test_verifier_from_public_key_matches_vkey() -> None:
    signer = NoteSigner.generate(ORIGIN)
    public_key: Ed25519PublicKey = signer.private_key.public_key()
    assert NoteVerifier.from_public_key(ORIGIN, public_key).vkey() == signer.verifier().vkey()


@pytest.mark.parametrize("name", ["", "has space", "has+plus", "tab\tname", "nbsp\u00a0name"])
def test_invalid_key_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidKeyError):
        NoteSigner.generate(name)


@pytest.mark.parametrize(
    "vkey",
    [
        "no-plus-signs",
        "name+530d903a",
        "example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # upper-case hex
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # wrong key ID
        "example.com/bar+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # ID is of another name
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",  # bad base64
        "example.com/foo+530d903a+" + base64.b64encode(b"\x02" + bytes(32)).decode(),  # not Ed25519
        "example.com/foo+530d903a+" + base64.b64encode(b"\x01" + bytes(31)).decode(),  # short key
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(InvalidKeyError):
        NoteVerifier.from_vkey(vkey)


def test_malformed_signer_keys_are_refused() -> None:
    skey = NoteSigner.generate(ORIGIN).skey()
    name_and_rest = skey.removeprefix("PRIVATE+KEY+")
    for bad in (
        name_and_rest,  # missing PRIVATE+KEY+
        "PRIVATE+KEY+" + ORIGIN,  # missing parts
        skey.replace(f"+{skey.split('+')[3]}+", "+00000000+"),  # wrong key ID
        skey[:-4] + "!!!!",  # bad base64
    ):
        with pytest.raises(InvalidKeyError):
            NoteSigner.from_skey(bad)


# --- note verification rules ---------------------------------------------------------------------


def test_signatures_from_unknown_keys_are_ignored() -> None:
    trusted, stranger = NoteSigner.generate(ORIGIN), NoteSigner.generate("witness.example/w1")
    note = sign_note("text\n", [stranger, trusted])
    assert open_note(note, [trusted.verifier()]) == "text\n"
    with pytest.raises(UnverifiedNoteError):
        open_note(note, [NoteSigner.generate("other.example/x").verifier()])


def test_same_name_with_another_key_id_is_an_unknown_key() -> None:
    signer, impostor = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
    with pytest.raises(UnverifiedNoteError):
        open_note(sign_note("text\n", [impostor]), [signer.verifier()])


def test_a_failing_signature_from_a_known_key_rejects_the_note() -> None:
    signer = NoteSigner.generate(ORIGIN)
    note = sign_note("text\n", [signer])
    name, signature = split_note(note)[1][0]
    forged_signature = signature[:4] + bytes(64)
    forged = f"text\n\n\u2014 {name} {base64.b64encode(forged_signature).decode()}\n"
    # Even with a valid signature from the same key beside it, a bad one rejects the note.
    with pytest.raises(NoteSignatureError):
        open_note(forged + note.split("\n\n", 1)[1], [signer.verifier()])


def test_the_last_blank_line_separates_text_from_signatures() -> None:
    signer = NoteSigner.generate(ORIGIN)
    text = "paragraph one\n\nparagraph two\n"
    assert open_note(sign_note(text, [signer]), [signer.verifier()]) == text


@pytest.mark.parametrize(
    "note",
    [
        "no signature block\n",
        "text\n\n",
        "text\n\n\u2014 name c2ln\n\u2014 trailing line without newline",
        "text\n\n- name c2lnbmF0dXJl\n",  # hyphen instead of em dash
        "text\n\n\u2014 name\n",  # no signature
        "text\n\n\u2014 name not base64!\n",
        "text\n\n\u2014 name AAA=\n",  # shorter than a key ID
        "text\n\n\u2014 bad+name c2lnbmF0dXJl\n",
        "te\x07xt\n\n\u2014 name c2lnbmF0dXJl\n",  # control character
        "text\r\n\n\u2014 name c2lnbmF0dXJl\n",  # CR is a control character too
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(MalformedNoteError):
        open_note(note, [NoteSigner.generate(ORIGIN).verifier()])


def test_non_utf8_notes_are_refused() -> None:
    with pytest.raises(MalformedNoteError):
        open_note(b"text\xff\n\n\xe2\x80\x94 name c2lnbmF0dXJl\n", [])
    with pytest.raises(MalformedNoteError):
        open_note("text\ud800\n\n\u2014 name c2lnbmF0dXJl\n", [])  # lone surrogate


def test_oversized_notes_are_refused() -> None:
    with pytest.raises(MalformedNoteError):
        open_note("x" * MAX_NOTE_SIZE_BYTES + "\n\n\u2014 name c2lnbmF0dXJl\n", [])


def test_notes_with_too_many_signatures_are_refused() -> None:
    signer = NoteSigner.generate(ORIGIN)
    line = signer.signature_line("text\n")
    assert open_note("text\n\n" + line * 16, [signer.verifier()]) == "text\n"  # spec minimum
    with pytest.raises(MalformedNoteError):
        open_note("text\n\n" + line * (MAX_NOTE_SIGNATURES + 1), [signer.verifier()])


def test_sign_note_needs_a_newline_terminated_text_and_a_signer() -> None:
    signer = NoteSigner.generate(ORIGIN)
    with pytest.raises(MalformedNoteError):
        sign_note("no newline", [signer])
    with pytest.raises(MalformedNoteError):
        sign_note("text\n", [])


# --- checkpoint bodies -------------------------------------------------------------------------------


def test_checkpoint_body_format() -> None:
    checkpoint = Checkpoint(ORIGIN, 1234, ROOT, timestamp_ms=1_700_000_000_123, extension_lines=("region eu-west",))
    root_b64 = base64.b64encode(ROOT).decode()
    assert checkpoint.body() == f"{ORIGIN}\n1234\n{root_b64}\ntime-unix-ms 1700000000123\nregion eu-west\n"
    assert Checkpoint.parse(checkpoint.body()) == checkpoint
    assert Checkpoint.parse(f"{ORIGIN}\n0\n{root_b64}\n") == Checkpoint(ORIGIN, 0, ROOT)


@pytest.mark.parametrize(
    "body",
    [
        "origin\n12\n",  # no root line
        "origin\n012\n{root}\n",  # leading zero
        "origin\n-1\n{root}\n",
        "origin\n18446744073709551616\n{root}\n",  # beyond uint64
        "origin\n12\n{root}",  # no final newline
        "origin\n12\n{root}\n\n",  # empty extension line
        "\n12\n{root}\n",  # empty origin
        "origin\n12\nnot-base64\n",
        "origin\n12\nAAAA\n",  # root of the wrong length
        "origin\n12\n{root}\ntime-unix-ms 1\ntime-unix-ms 2\n",
        "origin\n12\n{root}\ntime-unix-ms 01\n",
        "origin\n12\n{root}\ntime-unix-ms soon\n",
    ],
)
def test_malformed_checkpoint_bodies_are_refused(body: str) -> None:
    with pytest.raises(MalformedCheckpointError):
        Checkpoint.parse(body.format(root=base64.b64encode(ROOT).decode()))


@pytest.mark.parametrize(
    ("origin", "extension_lines"),
    [("", ()), ("two\nlines", ()), ("tab\there", ()), (ORIGIN, ("",)), (ORIGIN, ("a\nb",)), (ORIGIN, ("bell\x07",))],
)
def test_invalid_checkpoint_fields_are_refused(origin: str, extension_lines: tuple[str, ...]) -> None:
    with pytest.raises(MalformedCheckpointError):
        Checkpoint(origin, 1, ROOT, extension_lines=extension_lines)


def test_signed_checkpoint_round_trip() -> None:
    signer = NoteSigner.generate(ORIGIN)
    checkpoint = Checkpoint(ORIGIN, 7, ROOT, timestamp_ms=5)
    note = sign_checkpoint(checkpoint, [signer])
    assert verify_checkpoint(note, [signer.verifier()]) == checkpoint
    assert checkpoint_from_note(note) == checkpoint
    assert checkpoint_from_note(checkpoint.body()) == checkpoint


# --- checkpoints in the store ---------------------------------------------------------------------


def test_store_signs_and_keeps_checkpoints(tmp_path: Path) -> None:
    signer = NoteSigner.generate(ORIGIN)
    with LedgerStore.create(tmp_path, hash_name="sha256", signer=signer) as store:
        assert store.latest_checkpoint() is None
        empty = store.create_checkpoint(ORIGIN, timestamp_ms=1)
        assert empty.checkpoint.root_hash == merkle.SHA256.empty_root()
        store.append_batch([b"a", b"b", b"c"])
        stored = store.create_checkpoint(ORIGIN, timestamp_ms=2, extension_lines=["batch 1"])
        assert stored.checkpoint == Checkpoint(ORIGIN, 3, store.root(), timestamp_ms=2, extension_lines=("batch 1",))
        assert verify_checkpoint(stored.note, [signer.verifier()]) == stored.checkpoint
        # One checkpoint per size: asking again returns the first one, time unchanged.
        assert store.create_checkpoint(ORIGIN, timestamp_ms=99) == stored
        assert store.checkpoint(3) == stored
        assert store.checkpoint(2) is None
        assert store.latest_checkpoint() == stored
        assert store.checkpoints() == [empty, stored]


def test_unsigned_checkpoints_without_a_signer(tmp_path: Path) -> None:
    with LedgerStore.create(tmp_path) as store:
        store.append_batch([b"x"])
        stored = store.create_checkpoint(ORIGIN)
        assert stored.note == stored.checkpoint.body()
        assert stored.checkpoint.timestamp_ms is not None and stored.checkpoint.timestamp_ms > 1_600_000_000_000
        with pytest.raises(MalformedNoteError):
            verify_checkpoint(stored.note, [])


def test_offline_verifier_needs_only_the_note_the_proof_and_the_public_key(tmp_path: Path) -> None:
    """The intended audit flow: a verifier with the log's vkey checks a decision's inclusion."""
    skey, vkey = generate_key_pair(ORIGIN)
    decisions = [f"order {i} accepted".encode() for i in range(1000)]
    with LedgerStore.create(tmp_path, signer=NoteSigner.from_skey(skey)) as store:
        store.append_batch(decisions)
        note = store.create_checkpoint(ORIGIN).note
        proof = store.inclusion_proof(417)
        hash_name = store.hash_name
    checkpoint = verify_checkpoint(note, [NoteVerifier.from_vkey(vkey)])
    hasher = merkle.hasher_for(hash_name)
    merkle.verify_inclusion(hasher, 417, checkpoint.tree_size, hasher.hash_leaf(decisions[417]), proof, checkpoint.root_hash)
