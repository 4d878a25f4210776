package org.qwenedge.demo.core;

/**
 * How the chat samples: temperature and a reply length limit, checked once.
 *
 * <p>ExecuTorch's runner takes a temperature per call; 0 means greedy (argmax), anything above
 * samples with the runner's fixed top-p of 0.9. The reply limit is enforced by the app (it stops the
 * runner after that many tokens), because the runner's own limit counts prompt tokens too.
 */
public final class Sampling {
  public static final float MAX_TEMPERATURE = 2f;
  public static final int MAX_NEW_TOKENS = 4096;
  /** Qwen's suggested temperature for non-thinking chat, and a reply limit that fits a phone screen. */
  public static final Sampling CHAT = new Sampling(0.7f, 256);

  public final float temperature;
  public final int maxNewTokens;

  private Sampling(float temperature, int maxNewTokens) {
    this.temperature = temperature;
    this.maxNewTokens = maxNewTokens;
  }

  /** Checked settings; an IllegalArgumentException says which value is out of range and the range. */
  public static Sampling of(float temperature, int maxNewTokens) {
    if (!(temperature >= 0f && temperature <= MAX_TEMPERATURE)) {
      throw new IllegalArgumentException("temperature " + temperature + ": use 0 (greedy) to " + MAX_TEMPERATURE);
    }
    if (maxNewTokens < 1 || maxNewTokens > MAX_NEW_TOKENS) {
      throw new IllegalArgumentException("max_new_tokens " + maxNewTokens + ": use 1 to " + MAX_NEW_TOKENS);
    }
    return new Sampling(temperature, maxNewTokens);
  }

  /** Greedy decoding of {@code maxNewTokens} tokens, as the self-check needs. */
  public static Sampling greedy(int maxNewTokens) {
    return of(0f, maxNewTokens);
  }

  public boolean isGreedy() {
    return temperature == 0f;
  }

  @Override
  public String toString() {
    return (isGreedy() ? "greedy" : "temperature " + temperature) + ", up to " + maxNewTokens + " tokens";
  }
}
