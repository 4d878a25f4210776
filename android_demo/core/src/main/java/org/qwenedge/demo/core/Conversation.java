package org.qwenedge.demo.core;

import java.nio.charset.StandardCharsets;

/**
 * One chat's place in the runner's context: what to send for the next message, and when the
 * context is full so the chat must start over.
 *
 * <p>The runner keeps every turn in its KV cache (capacity {@code contextLength} positions) and
 * refuses a prompt that does not fit. Before sending, a message is sized by its UTF-8 length, an
 * upper bound on its token count (every token is at least one byte); after the reply, the runner's
 * statistics give the exact positions used.
 */
public final class Conversation {
  /** The text to send, and whether the runner's context must be reset first. */
  public static final class Turn {
    public final String prompt;
    public final boolean startsOver;

    Turn(String prompt, boolean startsOver) {
      this.prompt = prompt;
      this.startsOver = startsOver;
    }
  }

  private final ChatTemplate template;
  private final int contextLength;
  private final String system;
  private long used;
  private boolean open;

  /** {@code system} may be null for no system message. */
  public Conversation(ChatTemplate template, int contextLength, String system) {
    this.template = template;
    this.contextLength = contextLength;
    this.system = system;
  }

  /**
   * The next turn for {@code user}; when it may not fit after the turns so far, a fresh conversation
   * ({@link Turn#startsOver}: reset the runner's context). A message too long for an empty context
   * raises IllegalArgumentException.
   */
  public Turn next(String user, int maxNewTokens) {
    if (open) {
      String prompt = template.nextTurn(user);
      if (fits(used, prompt, maxNewTokens)) return new Turn(prompt, false);
    }
    String prompt = template.firstTurn(system, user);
    if (!fits(0, prompt, maxNewTokens)) {
      throw new IllegalArgumentException("the message is too long: " + bytes(prompt) + " bytes of prompt and "
          + maxNewTokens + " reply tokens may not fit the bundle's context of " + contextLength + " tokens");
    }
    boolean startsOver = open;
    reset();
    return new Turn(prompt, startsOver);
  }

  /** Account for a finished reply (the runner's statistics of the call that produced it). */
  public void record(GenerationStats stats) {
    used += stats.positionsUsed();
    open = true;
  }

  /** Forget the conversation (after resetting the runner's context, or after a failed call). */
  public void reset() {
    used = 0;
    open = false;
  }

  /** Context positions the conversation holds. */
  public long used() {
    return used;
  }

  private boolean fits(long before, String prompt, int maxNewTokens) {
    return before + bytes(prompt) + maxNewTokens <= contextLength;
  }

  private static long bytes(String text) {
    return text.getBytes(StandardCharsets.UTF_8).length;
  }
}
