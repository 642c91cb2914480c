"""A word-level LSTM language model on a small text made up in this script.

Shows: Embedding, a two-layer LSTM and a Linear decoder; truncated backpropagation through
time, where the hidden state carries over between chunks but is detached from the graph;
gradient clipping with nn.utils.clip_grad_norm_; perplexity on held-out text; and sampling
a few sentences from the trained model.
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


class LanguageModel(nn.Module):
    def __init__(self, vocab_size, embed=32, hidden=96, layers=2, dropout=0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, dropout=dropout,
                            batch_first=True)
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, tokens, hidden=None):
        output, hidden = self.lstm(self.embedding(tokens), hidden)
        return self.decoder(output), hidden


def run_epoch(model, data, bptt, optimizer=None, clip=1.0):
    """One pass over ``data`` in chunks of ``bptt`` steps; trains when given an optimizer."""
    model.train(optimizer is not None)
    hidden, total_loss, total_tokens = None, 0.0, 0
    for start in range(0, data.size(1) - 1, bptt):
        end = min(start + bptt, data.size(1) - 1)
        inputs, targets = data[:, start:end], data[:, start + 1:end + 1]
        if hidden is not None:
            hidden = tuple(h.detach() for h in hidden)  # truncate the graph at the chunk
        logits, hidden = model(inputs, hidden)
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
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bptt", type=int, default=20)
    parser.add_argument("--lr", type=float, default=5e-3)
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

    model = LanguageModel(len(vocab)).to(device)
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

    # Sample word by word, feeding each word back in with the carried hidden state.
    model.eval()
    token, hidden, sampled = torch.tensor([[word_to_id["."]]], device=device), None, []
    with torch.no_grad():
        for _ in range(40):
            logits, hidden = model(token, hidden)
            probs = F.softmax(logits[0, -1], dim=0).cpu().numpy().astype(np.float64)
            next_id = int(rng.choice(len(vocab), p=probs / probs.sum()))
            sampled.append(vocab[next_id])
            token = torch.tensor([[next_id]], device=device)
    print("sample:", " ".join(sampled))


if __name__ == "__main__":
    main()
