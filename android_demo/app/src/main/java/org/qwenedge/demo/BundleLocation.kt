package org.qwenedge.demo

import android.content.Context
import java.io.File
import org.qwenedge.demo.core.BundleException
import org.qwenedge.demo.core.Contract
import org.qwenedge.demo.core.Json
import org.qwenedge.demo.core.Manifest

/**
 * Where the app finds its bundle: a directory pushed with adb, else one packaged in the APK's
 * assets, copied out once (the runner maps files from disk; assets are not files).
 */
object BundleLocation {
  private const val DIR = "bundle"

  /** The directory `adb push` fills: /sdcard/Android/data/<package>/files/bundle. */
  fun pushedDir(context: Context): File = File(context.getExternalFilesDir(null), DIR)

  /** The bundle directory to open; [onCopy] reports the asset being copied. */
  fun find(context: Context, onCopy: (String) -> Unit): File {
    val pushed = pushedDir(context)
    if (File(pushed, Contract.MANIFEST_FILE).isFile) return pushed
    if (context.assets.list(DIR).orEmpty().contains(Contract.MANIFEST_FILE)) return copyAssets(context, onCopy)
    throw BundleException(
        "No bundle found. Push one (see README):\n" +
            "  adb shell mkdir -p ${pushed.path}\n" +
            "  for f in <bundle>/*; do adb push \"\$f\" ${pushed.path}/; done\n" +
            "or package one in app/src/main/assets/$DIR/ before building.")
  }

  private fun copyAssets(context: Context, onCopy: (String) -> Unit): File {
    val target = File(context.filesDir, DIR)
    val manifestBytes = context.assets.open("$DIR/${Contract.MANIFEST_FILE}").use { it.readBytes() }
    val copied = File(target, Contract.MANIFEST_FILE)
    if (copied.isFile && copied.readBytes().contentEquals(manifestBytes)) return target
    target.deleteRecursively()
    val manifest = Manifest.parse(Json.parse(String(manifestBytes, Charsets.UTF_8)))
    for (entry in manifest.programFiles + manifest.tokenizerFiles + manifest.selfcheck) {
      onCopy(entry.path)
      val file = File(target, entry.path)
      file.parentFile?.mkdirs()
      context.assets.open("$DIR/${entry.path}").use { input -> file.outputStream().use { input.copyTo(it) } }
    }
    copied.writeBytes(manifestBytes) // last: a copy cut short is redone on the next launch
    return target
  }
}
