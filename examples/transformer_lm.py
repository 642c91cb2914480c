"""A word-level Transformer language model on a small text made up in this script.

The Transformer variant of PyTorch's word-language-model example: Embedding scaled by
sqrt(d_model), sinusoidal positional encoding (a registered buffer), a causal
nn.TransformerEncoder (the mask from nn.Transformer.generate_square_subsequent_mask) and a
Linear decoder; fixed-length chunks (no state carries over), gradient clipping, perplexity
on held-out text, and sampling a few sentences.
"""

import argparse
import math
import time

import numpy as np

import dlcore as torch
import dlcore.nn as nn
import dlcore.nn.functional as F
import dlcore.optim as optim

# A toy grammar: every sentence is "the ADJ? NOUN VERB the ADJ? NOUN (PREP the NOUN)? ."
NOUNS = ["cat", "dog", "bird", "fox", "child", "farmer", "ball", "tree", "river", "house"]
VERBS = ["sees", "chases", "likes", "finds", "follows", "paints"]
ADJECTIVES = ["small", "old", "red", "quick", "quiet", "happy"]
PREPOSITIONS = ["near", "under", "behind", "beside"]


def make_text(n_sentences, rng):
    def noun_phrase():
        words = ["the"]
        if rng.random() < 0.5:
            words.append(rng.choice(ADJECTIVES))
        return words + [rng.choice(NOUNS)]

    words = []
    for _ in range(n_sentences):
        words += noun_phrase() + [rng.choice(VERBS)] + noun_phrase()
        if rng.random() < 0.3:
            words += [rng.choice(PREPOSITIONS), "the", rng.choice(NOUNS)]
        words.append(".")
    return words


def batchify(ids, batch_size):
    """Cut a 1-D id sequence into batch_size parallel streams: a (batch_size, L) tensor."""
    length = len(ids) // batch_size
    return torch.tensor(ids[: length * batch_size]).view(batch_size, length)


class PositionalEncoding(nn.Module):
    """Adds sin/cos of the position at geometric frequencies (Vaswani et al.)."""

    def __init__(self, d_model, dropout=0.1, max_len=512):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() *
                             (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))  # (1, max_len, d_model)

    def forward(self, x):  # x: (N, L, d_model)
        return self.dropout(x + self.pe[:, : x.size(1)])


class TransformerModel(nn.Module):
    def __init__(self, vocab_size, d_model=64, nhead=4, d_hid=128, layers=2, dropout=0.1):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.pos_encoder = PositionalEncoding(d_model, dropout)
        layer = nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, layers,
                                                         enable_nested_tensor=False)
        self.decoder = nn.Linear(d_model, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens):  # tokens: (N, L) -> logits (N, L, vocab)
        length = tokens.size(1)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        x = self.pos_encoder(self.embedding(tokens) * math.sqrt(self.d_model))
        return self.decoder(self.transformer_encoder(x, mask=mask, is_causal=True))


def run_epoch(model, data, bptt, optimizer=None, clip=0.5):
    """One pass over ``data`` in chunks of ``bptt`` steps; trains when given an optimizer."""
    model.train(optimizer is not None)
    total_loss, total_tokens = 0.0, 0
    for start in range(0, data.size(1) - 1, bptt):
        end = min(start + bptt, data.size(1) - 1)
        inputs, targets = data[:, start:end], data[:, start + 1:end + 1]
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
        total_loss += loss.item() * targets.numel()
        total_tokens += targets.numel()
    return total_loss / total_tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bptt", type=int, default=24)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    words = make_text(args.sentences, rng)
    vocab = sorted(set(words))
    word_to_id = {w: i for i, w in enumerate(vocab)}
    ids = [word_to_id[w] for w in words]
    split = int(len(ids) * 0.9)
    device = torch.device(args.device)
    train_data = batchify(ids[:split], args.batch_size).to(device)
    valid_data = batchify(ids[split:], args.batch_size).to(device)
    print(f"{len(words)} words, vocabulary of {len(vocab)}")

    model = TransformerModel(len(vocab)).to(device)
    optimizer = optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_loss = run_epoch(model, train_data, args.bptt, optimizer)
        with torch.no_grad():
            valid_loss = run_epoch(model, valid_data, args.bptt)
        print(f"epoch {epoch:2d}  train loss {train_loss:.4f}  valid loss {valid_loss:.4f}  "
              f"valid perplexity {math.exp(valid_loss):.2f}")
    print(f"final valid perplexity {math.exp(valid_loss):.2f} "
          f"({time.perf_counter() - start:.1f} s)")

    # Sample word by word: the model rereads the last bptt words each step (no state).
    model.eval()
    context, sampled = [word_to_id["."]], []
    with torch.no_grad():
        for _ in range(40):
            tokens = torch.tensor([context[-args.bptt:]], device=device)
            logits = model(tokens)
            probs = F.softmax(logits[0, -1], dim=0).cpu().numpy().astype(np.float64)
            next_id = int(rng.choice(len(vocab), p=probs / probs.sum()))
            sampled.append(vocab[next_id])
            context.append(next_id)
    print("sample:", " ".join(sampled))


if __name__ == "__main__":
    main()
