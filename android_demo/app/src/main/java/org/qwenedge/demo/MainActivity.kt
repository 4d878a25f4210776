package org.qwenedge.demo

import android.app.Activity
import android.content.Context
import android.graphics.Color
import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.ScrollView
import android.widget.TextView
import java.io.File
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import org.qwenedge.demo.core.BundleFiles
import org.qwenedge.demo.core.ChatTemplate
import org.qwenedge.demo.core.Conversation
import org.qwenedge.demo.core.Manifest
import org.qwenedge.demo.core.Sampling

/**
 * One screen: the bundle's status and self-check result on top, the chat below. Loading,
 * verification, the self-check and generation run on [worker], one task at a time; views change
 * on the UI thread only.
 */
class MainActivity : Activity() {
  /** An opened bundle: the runner and the chat it holds. */
  private class Chat(val engine: Engine, val template: ChatTemplate, val conversation: Conversation)

  private val worker: ExecutorService = Executors.newSingleThreadExecutor()
  private lateinit var status: TextView
  private lateinit var transcript: TextView
  private lateinit var scroll: ScrollView
  private lateinit var stats: TextView
  private lateinit var input: EditText
  private lateinit var send: Button
  private lateinit var selfCheckButton: Button
  private lateinit var sampling: Sampling

  @Volatile private var chat: Chat? = null
  @Volatile private var generating = false
  private val history = StringBuilder() // worker thread only

  override fun onCreate(savedInstanceState: Bundle?) {
    super.onCreate(savedInstanceState)
    setContentView(R.layout.activity_main)
    status = findViewById(R.id.status)
    transcript = findViewById(R.id.transcript)
    scroll = findViewById(R.id.scroll)
    stats = findViewById(R.id.stats)
    input = findViewById(R.id.input)
    send = findViewById(R.id.send)
    selfCheckButton = findViewById(R.id.selfcheck)
    sampling = samplingFromIntent()
    send.setOnClickListener { if (generating) chat?.engine?.stop() else submit() }
    selfCheckButton.setOnClickListener {
      setChatEnabled(false)
      worker.execute { selfCheck(force = true) }
    }
    setChatEnabled(false)
    worker.execute { open() }
  }

  override fun onDestroy() {
    chat?.engine?.stop()
    worker.execute { chat?.engine?.close() }
    worker.shutdown()
    super.onDestroy()
  }

  /** `adb shell am start -n org.qwenedge.demo/.MainActivity --ef temperature 0.2 --ei max_new_tokens 128` */
  private fun samplingFromIntent(): Sampling {
    val extras = intent.extras ?: return Sampling.CHAT
    return try {
      Sampling.of(extras.getFloat("temperature", Sampling.CHAT.temperature),
          extras.getInt("max_new_tokens", Sampling.CHAT.maxNewTokens))
    } catch (e: IllegalArgumentException) {
      show("Ignoring the launch settings: ${e.message}", error = true)
      Sampling.CHAT
    }
  }

  private fun open() {
    try {
      val dir = BundleLocation.find(this) { show("Copying $it from the APK...") }
      val manifest = Manifest.load(dir)
      verify(dir, manifest)
      show("Loading ${manifest.sourceName} (${manifest.quant})...")
      val template = ChatTemplate.from(manifest)
      chat = Chat(Engine(dir, manifest), template, Conversation(template, manifest.contextLength, null))
      selfCheck(force = false)
    } catch (e: Exception) {
      show("Cannot open the bundle: ${e.message}", error = true)
    }
  }

  /** Hash the files the first time, or when they changed since the last verification. */
  private fun verify(dir: File, manifest: Manifest) {
    val files = manifest.filesToVerify()
    val stamp = BundleFiles.stamp(dir, files)
    if (prefs().getString(KEY_VERIFIED, null) == stamp) return
    var shown = -1L
    BundleFiles.verify(dir, files) { done, total ->
      val percent = 100 * done / maxOf(total, 1)
      if (percent != shown) {
        shown = percent
        show("Verifying checksums: $percent %")
      }
    }
    prefs().edit().putString(KEY_VERIFIED, stamp).remove(KEY_SELFCHECK).apply()
  }

  /** The self-check runs once per verified bundle (and on request); its result stays on screen. */
  private fun selfCheck(force: Boolean) {
    val chat = chat ?: return
    var summary = prefs().getString(KEY_SELFCHECK, null)
    var passed = prefs().getBoolean(KEY_PASSED, false)
    if (summary == null || force) {
      show("Running the self-check...")
      try {
        val result = chat.engine.selfCheck()
        summary = result.summary()
        passed = result.passed
      } catch (e: Exception) {
        summary = "Self-check could not run: ${e.message}"
        passed = false
      }
      prefs().edit().putString(KEY_SELFCHECK, summary).putBoolean(KEY_PASSED, passed).apply()
    }
    chat.conversation.reset() // the self-check reset the runner's context
    show("$summary\nChat sampling: $sampling", error = !passed)
    runOnUiThread { setChatEnabled(true) }
  }

  private fun submit() {
    val chat = chat ?: return
    val message = input.text.toString().trim()
    if (message.isEmpty()) return
    input.text.clear()
    generating = true
    send.setText(R.string.stop)
    selfCheckButton.isEnabled = false
    worker.execute { reply(chat, message) }
  }

  private fun reply(chat: Chat, message: String) {
    val turn = try {
      chat.conversation.next(message, sampling.maxNewTokens)
    } catch (e: IllegalArgumentException) { // too long for any context: the chat so far stays
      history.append("You: ").append(message).append("\n\n[").append(e.message).append("]\n\n")
      return finishReply()
    }
    if (turn.startsOver) {
      chat.engine.resetContext()
      history.append(getString(R.string.context_full)).append("\n\n")
    }
    history.append("You: ").append(message).append("\n\nModel: ")
    val reply = StringBuilder()
    try {
      val result = chat.engine.generate(turn.prompt, sampling, NO_SEQ_LIMIT) { piece ->
        reply.append(piece)
        val shown = history.toString() + chat.template.visible(reply.toString())
        runOnUiThread { showTranscript(shown) }
      }
      chat.conversation.record(result)
      val line = "${result.summary()} \u00b7 context ${chat.conversation.used()} tokens used"
      runOnUiThread { stats.text = line }
    } catch (e: Exception) {
      chat.engine.resetContext() // after a failure the runner's position is unknown: start over
      chat.conversation.reset()
      reply.append("\n[").append(e.message).append("; the next message starts a new conversation]")
    }
    history.append(chat.template.visible(reply.toString())).append("\n\n")
    finishReply()
  }

  private fun finishReply() {
    val shown = history.toString()
    runOnUiThread {
      showTranscript(shown)
      generating = false
      send.setText(R.string.send)
      selfCheckButton.isEnabled = true
    }
  }

  private fun showTranscript(text: String) {
    transcript.text = text
    scroll.post { scroll.fullScroll(ScrollView.FOCUS_DOWN) }
  }

  private fun setChatEnabled(enabled: Boolean) {
    input.isEnabled = enabled
    send.isEnabled = enabled
    selfCheckButton.isEnabled = enabled
  }

  private fun show(text: String, error: Boolean = false) = runOnUiThread {
    status.text = text
    status.setTextColor(if (error) Color.rgb(0xB0, 0x00, 0x20) else Color.DKGRAY)
  }

  private fun prefs() = getSharedPreferences("bundle", Context.MODE_PRIVATE)

  private companion object {
    const val KEY_VERIFIED = "verified_stamp"
    const val KEY_SELFCHECK = "selfcheck_summary"
    const val KEY_PASSED = "selfcheck_passed"
    const val NO_SEQ_LIMIT = -1 // the runner may use the rest of the context; the app stops at maxNewTokens
  }
}
