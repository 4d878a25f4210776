package org.qwenedge.demo.core;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;

/**
 * Chat turns as text for the runner, in the ChatML format of Qwen's chat template.
 *
 * <p>The bundle carries the checkpoint's Jinja template; a phone has no Jinja, so this class writes
 * the ChatML turns that template produces and only checks that the template is a ChatML one. When the
 * template knows thinking blocks ({@code <think>}), each reply opens with an empty one, the
 * template's non-thinking mode: a chat on a phone wants the answer, not the reasoning.
 *
 * <p>Turns are incremental: the runner keeps the conversation in its KV cache, so each call sends
 * only what is new. The runner does not feed the last token it sampled (the EOS that ended the
 * reply) back into the model, so the next turn starts by closing the reply with {@code <|im_end|>}.
 */
public final class ChatTemplate {
  public static final String IM_START = "<|im_start|>";
  public static final String IM_END = "<|im_end|>";
  static final String EMPTY_THINK = "<think>\n\n</think>\n\n";

  private final boolean emptyThinkBlock;
  private final List<String> hidden;

  private ChatTemplate(boolean emptyThinkBlock, Collection<String> specialTokens) {
    this.emptyThinkBlock = emptyThinkBlock;
    this.hidden = new ArrayList<>(specialTokens);
  }

  /** The chat format of a bundle, from its manifest's template and special tokens. */
  public static ChatTemplate from(Manifest manifest) {
    return from(manifest.chatTemplate, manifest.specialTokens.keySet());
  }

  /** The format {@code template} describes; {@code specialTokens} are hidden from shown replies. */
  public static ChatTemplate from(String template, Collection<String> specialTokens) {
    String where = Contract.MANIFEST_FILE + ": tokenizer." + Contract.CHAT_TEMPLATE;
    if (template == null) {
      throw new BundleException(where + " is null: the checkpoint had no chat template; export from a checkpoint"
          + " whose tokenizer_config.json has one");
    }
    if (!template.contains(IM_START) || !template.contains(IM_END)) {
      throw new BundleException(where + " is not a ChatML template (no " + IM_START + " / " + IM_END
          + "); this app formats Qwen's ChatML chats only");
    }
    return new ChatTemplate(template.contains("<think>"), specialTokens);
  }

  /** What starts the assistant's reply. */
  public String generationPrompt() {
    return IM_START + "assistant\n" + (emptyThinkBlock ? EMPTY_THINK : "");
  }

  /** The first turn of a conversation; {@code system} may be null for none. */
  public String firstTurn(String system, String user) {
    String head = system == null ? "" : IM_START + "system\n" + system + IM_END + "\n";
    return head + IM_START + "user\n" + user + IM_END + "\n" + generationPrompt();
  }

  /** A later turn: close the previous reply, then the user's message and the reply's start. */
  public String nextTurn(String user) {
    return IM_END + "\n" + IM_START + "user\n" + user + IM_END + "\n" + generationPrompt();
  }

  /** A reply as shown: the special tokens the runner prints (the final {@code <|im_end|>}) removed. */
  public String visible(String generated) {
    String out = generated;
    for (String token : hidden) {
      if (!token.isEmpty()) out = out.replace(token, "");
    }
    return out;
  }
}
