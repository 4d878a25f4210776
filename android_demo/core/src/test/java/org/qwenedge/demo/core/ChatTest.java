package org.qwenedge.demo.core;

import java.util.Arrays;
import java.util.Collections;

final class ChatTest {
  private ChatTest() {}

  private static final String QWEN_REPLY_START = "<|im_start|>assistant\n<think>\n\n</think>\n\n";

  private static ChatTemplate qwen() {
    return ChatTemplate.from(Fixtures.TEMPLATE, Arrays.asList("<|im_end|>", "<|im_start|>", "<|endoftext|>"));
  }

  static void testFirstTurnIsChatMlWithAnEmptyThinkingBlock() {
    Check.equal("<|im_start|>user\nHi<|im_end|>\n" + QWEN_REPLY_START, qwen().firstTurn(null, "Hi"), "no system");
    Check.equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" + QWEN_REPLY_START,
        qwen().firstTurn("Be brief.", "Hi"), "with a system message");
  }

  static void testATemplateWithoutThinkingOpensThePlainReply() {
    ChatTemplate plain = ChatTemplate.from("{{ '<|im_start|>' + m + '<|im_end|>' }}", Collections.<String>emptyList());
    Check.equal("<|im_start|>assistant\n", plain.generationPrompt(), "generation prompt");
  }

  static void testNextTurnClosesThePreviousReply() {
    Check.equal("<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n" + QWEN_REPLY_START, qwen().nextTurn("And?"), "next turn");
  }

  static void testShownRepliesHideSpecialTokens() {
    Check.equal("Hello there.", qwen().visible("Hello there.<|im_end|>"), "final EOS hidden");
    Check.equal("a<b>", qwen().visible("a<b><|endoftext|>"), "other special tokens too");
  }

  static void testTemplatesTheAppCannotFormatAreRefused() {
    Check.raises(BundleException.class, () -> ChatTemplate.from(null, Collections.<String>emptyList()),
        "tokenizer.chat_template is null", "tokenizer_config.json");
    Check.raises(BundleException.class,
        () -> ChatTemplate.from("{{ bos_token }}[INST] {{ m }} [/INST]", Collections.<String>emptyList()),
        "is not a ChatML template", "Qwen's ChatML chats only");
  }

  static void testAConversationContinuesInTheRunnersContext() {
    Conversation chat = new Conversation(qwen(), 256, null);
    Conversation.Turn first = chat.next("Hi", 32);
    Check.equal(qwen().firstTurn(null, "Hi"), first.prompt, "first turn");
    Check.isTrue(!first.startsOver, "nothing to start over");
    chat.record(new GenerationStats(20, 10, 0, 1, 2));
    Check.equal(30L, chat.used(), "positions used");
    Conversation.Turn second = chat.next("More", 32);
    Check.equal(qwen().nextTurn("More"), second.prompt, "second turn continues");
    Check.isTrue(!second.startsOver, "still fits");
  }

  static void testAFullContextStartsOver() {
    Conversation chat = new Conversation(qwen(), 256, "sys");
    chat.next("Hi", 32);
    chat.record(new GenerationStats(100, 100, 0, 1, 2));
    Conversation.Turn turn = chat.next("Another question", 32);
    Check.isTrue(turn.startsOver, "200 used + the turn + 32 reply tokens exceed 256");
    Check.equal(qwen().firstTurn("sys", "Another question"), turn.prompt, "a fresh first turn, system message kept");
    Check.equal(0L, chat.used(), "nothing used yet in the new conversation");
  }

  static void testAMessageTooLongForAnyContextIsRefused() {
    Conversation chat = new Conversation(qwen(), 64, null);
    char[] text = new char[100];
    Arrays.fill(text, 'x');
    Check.raises(IllegalArgumentException.class, () -> chat.next(new String(text), 8), "the message is too long",
        "context of 64 tokens");
  }

  static void testResetForgetsTheConversation() {
    Conversation chat = new Conversation(qwen(), 256, null);
    chat.next("Hi", 8);
    chat.record(new GenerationStats(20, 10, 0, 1, 2));
    chat.reset();
    Conversation.Turn turn = chat.next("Hi again", 8);
    Check.equal(qwen().firstTurn(null, "Hi again"), turn.prompt, "first turn after a reset");
    Check.isTrue(!turn.startsOver, "the caller already reset the runner");
  }
}
